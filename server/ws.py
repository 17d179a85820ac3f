"""Websocket transport (being written)."""

from aiohttp import web


async def handle(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotImplemented()
