"""WebRTC transport (being written): POST /offer."""

from __future__ import annotations

from aiohttp import web


def setup_routes(app: web.Application) -> None:
    """Add the WebRTC signalling route(s) to ``app``."""
