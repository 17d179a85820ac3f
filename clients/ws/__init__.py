"""Python websocket client: ``python -m clients.ws --wav speech.wav --out out.mp4``."""

from clients.ws.client import Received, ServerError, run_client, write_mp4

__all__ = ["Received", "ServerError", "run_client", "write_mp4"]
