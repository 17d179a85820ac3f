"""Server settings: one frozen dataclass, filled from the command line (``python -m server``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.scheduler import StreamSettings


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server can be told.

    Attributes:
        host, port: where to listen (127.0.0.1 by default: browsers only allow the microphone on
            https or localhost).
        cert, key: PEM files to serve https (for remote use).
        max_sessions: live sessions (websocket + WebRTC) admitted at once.
        ice_servers: RTCIceServer dicts for WebRTC (none by default: nothing contacts STUN).
        allowed_origins: extra Origins allowed for websockets and uploads (same-origin always).
        max_upload_bytes: photo upload limit.
        max_message_bytes: largest websocket message accepted.
        frame_size: output video side (multiple of 64).
        driver, driver_options, renderer, renderer_options: engine choices
            (``auto``: the shipped default).
        dwpose_dir: the official DWPose models' folder, to take reference poses from (None:
            MediaPipe).
        avatars: (name, photo path) pairs prepared at start-up as public avatars, listed
            after the bundled ``default``.
        stream: scheduler settings for live sessions.
        workers: worker threads (default: the machine's cores).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    cert: str | None = None
    key: str | None = None
    max_sessions: int = 4
    ice_servers: tuple[dict, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    frame_size: int = 512
    driver: str = "auto"
    driver_options: dict = field(default_factory=dict)
    renderer: str = "warp"
    renderer_options: dict = field(default_factory=dict)
    dwpose_dir: str | None = None
    avatars: tuple[tuple[str, str], ...] = ()
    stream: StreamSettings = field(default_factory=StreamSettings)
    workers: int | None = None
    send_timeout_s: float = 10.0  # a websocket client that reads nothing this long is dropped
    start_timeout_s: float = 30.0  # a websocket that starts no session this long is closed

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"
