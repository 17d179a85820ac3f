"""python -m server (being written)."""

import logging

from aiohttp import web

from server.app import make_app
from server.settings import ServerSettings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    s = ServerSettings()
    web.run_app(make_app(s), host=s.host, port=s.port)
