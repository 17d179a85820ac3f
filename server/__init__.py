"""Servers: WebRTC and websocket transports over engine sessions (live-engine issue)."""
