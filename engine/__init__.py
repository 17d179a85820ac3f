"""Streaming engine: sessions, the sliding-window scheduler and runners (live-engine issue)."""
