"""Clients: the browser page and the Python websocket client (live-engine issue)."""
