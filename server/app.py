"""The aiohttp application: the browser page, avatars, websocket and WebRTC sessions, health,
metrics and a clean shutdown.

Routes:
    GET  /                the browser client (clients/browser/index.html)
    GET  /static/…        its scripts and styles
    GET  /health          JSON: ok, sessions, limits
    GET  /metrics         Prometheus text
    GET  /avatars         JSON list of the public avatar ids (``default``; uploads are private)
    POST /avatars         upload a photo (raw body or multipart field ``image``) → {"id", "notes"}
    GET  /avatars/{id}    JSON: size, the mouth box (for clients that measure the mouth), notes
    GET  /ws              the websocket API (docs/protocol.md)
    POST /offer           WebRTC signalling (SDP offer → answer)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from engine.engine import Engine, EngineConfig
from mmgt.errors import ImageError, ImageTooLargeError
from mmgt.keypoints import layout
from mmgt.video import encode_jpeg
from server.avatars import AvatarStore, UploadBusy, UploadError
from server.settings import ServerSettings

log = logging.getLogger(__name__)

BROWSER_DIR = Path(__file__).resolve().parents[1] / "clients" / "browser"


class Admission:
    """At most ``limit`` sessions at once; ``enter`` returns False when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active = max(0, self.active - 1)


@dataclass
class ServerContext:
    """Per-server state (one per application, never module globals)."""

    settings: ServerSettings
    engine: Engine
    avatars: AvatarStore
    admission: Admission
    connections: set = field(default_factory=set)  # closers for live connections
    tasks: set = field(default_factory=set)
    stopping: bool = False  # set when the server shuts down (connections close as going away)

    def spawn(self, coro, name: str) -> asyncio.Task:  # noqa: ANN001
        """Start a task this server owns (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


CTX = web.AppKey("ctx", ServerContext)


def origin_allowed(request: web.Request, settings: ServerSettings) -> bool:
    """Non-browser clients send no Origin; browsers must come from this server's own origin
    (scheme-insensitive host:port match) or from ``allowed_origins``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in settings.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def mouth_box(reference_pose, frame_size: int) -> list[int]:  # noqa: ANN001
    """A box around the lips of a (134, 3) pose, enlarged for an open mouth."""
    lips = reference_pose[layout.LIPS, :2]
    x0, y0 = lips.min(0)
    x1, y1 = lips.max(0)
    w = x1 - x0
    box = [x0 - 0.15 * w, y0 - 0.2 * w, x1 + 0.15 * w, y1 + 0.6 * w]
    return [int(max(0, min(frame_size, v))) for v in box]


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(
        {
            "ok": True,
            "sessions": ctx.admission.active,
            "max_sessions": ctx.admission.limit,
            "driver": ctx.engine.driver_name,
            "renderer": ctx.settings.renderer,
            "frame_size": ctx.settings.frame_size,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CTX].engine.metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def list_avatars(request: web.Request) -> web.Response:
    return web.json_response({"avatars": request.app[CTX].avatars.public_ids()})


async def avatar_info(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    avatar = ctx.avatars.get(request.match_info["avatar_id"])
    if avatar is None:
        raise web.HTTPNotFound(text="unknown avatar")
    return web.json_response(
        {
            "id": request.match_info["avatar_id"],
            "size": avatar.frame_size,
            "mouth_box": mouth_box(avatar.reference_pose, avatar.frame_size),
            "notes": list(avatar.notes),
        }
    )


async def avatar_image(request: web.Request) -> web.Response:
    """The avatar as framed for the video (JPEG): what a page shows before a session starts."""
    avatar = request.app[CTX].avatars.get(request.match_info["avatar_id"])
    if avatar is None:
        raise web.HTTPNotFound(text="unknown avatar")
    jpeg = await asyncio.to_thread(encode_jpeg, avatar.image, 90)
    return web.Response(body=jpeg, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})  # fmt: skip


async def upload_avatar(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if not origin_allowed(request, ctx.settings):
        ctx.engine.metrics.errors_total.labels("origin").inc()
        raise web.HTTPForbidden(text="origin not allowed")
    limit = ctx.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 4096:
        ctx.engine.metrics.errors_total.labels("upload").inc()
        return web.json_response(  # JSON like every other refusal, for the page to show
            {"error": f"the photo is larger than {limit // 2**20} MB"}, status=413
        )
    try:
        data = await _read_upload(request, limit)
        avatar_id, avatar = await ctx.avatars.add_upload(data)
    except UploadBusy as exc:
        ctx.engine.metrics.errors_total.labels("upload_busy").inc()
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "5"})
    except ImageError as exc:
        ctx.engine.metrics.errors_total.labels("upload").inc()
        return web.json_response({"error": str(exc)}, status=_upload_status(exc))
    return web.json_response({"id": avatar_id, "notes": list(avatar.notes)})


def _upload_status(exc: ImageError) -> int:
    """413 over a size limit, 415 not a photo, 400 a malformed form, 422 a photo we cannot use
    (too small, no person, no face)."""
    if isinstance(exc, ImageTooLargeError):
        return 413
    return exc.status if isinstance(exc, UploadError) else 422


async def _read_upload(request: web.Request, limit: int) -> bytes:
    """The photo bytes from a raw body or a multipart ``image`` field, at most ``limit``."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if getattr(part, "name", None) == "image":
                return await _read_limited(part.read_chunk, limit)
        raise UploadError("multipart upload without an 'image' field", status=400)
    return await _read_limited(request.content.read, limit)


async def _read_limited(read, limit: int) -> bytes:  # noqa: ANN001
    buf = bytearray()
    while chunk := await read(65536):
        buf += chunk
        if len(buf) > limit:
            raise ImageTooLargeError(f"the photo is larger than {limit // 2**20} MB")
    return bytes(buf)


async def index(request: web.Request) -> web.StreamResponse:
    page = BROWSER_DIR / "index.html"
    if not page.exists():
        raise web.HTTPNotFound(text="browser client not installed")
    return web.FileResponse(page)


def make_app(settings: ServerSettings, engine: Engine | None = None) -> web.Application:
    """Build the application (the engine is created here unless given)."""
    from server import webrtc, ws

    if engine is None:
        engine = Engine(
            EngineConfig(
                driver=settings.driver,
                driver_options=dict(settings.driver_options),
                renderer=settings.renderer,
                renderer_options=dict(settings.renderer_options),
                stream=settings.stream,
                workers=settings.workers,
            )
        )
    engine.metrics.max_sessions.set(settings.max_sessions)
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        avatars=AvatarStore(
            settings.frame_size,
            max_bytes=settings.max_upload_bytes,
            dwpose_dir=settings.dwpose_dir,
            device=settings.renderer_options.get("device", "cpu"),
        ),
        admission=Admission(settings.max_sessions),
    )
    app = web.Application(client_max_size=settings.max_upload_bytes + 65536)
    app[CTX] = ctx
    app.router.add_get("/", index)
    if BROWSER_DIR.exists():
        app.router.add_static("/static/", BROWSER_DIR, show_index=False)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/avatars", list_avatars)
    app.router.add_post("/avatars", upload_avatar)
    app.router.add_get("/avatars/{avatar_id}", avatar_info)
    app.router.add_get("/avatars/{avatar_id}/image", avatar_image)
    app.router.add_get("/ws", ws.handle)
    webrtc.setup_routes(app)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


async def _startup(app: web.Application) -> None:
    ctx = app[CTX]
    avatar = await ctx.avatars.load_default()
    await asyncio.to_thread(ctx.engine.avatar_state, avatar)  # prepare once, off the loop
    for name, photo in ctx.settings.avatars:  # a bad photo stops the start, naming it
        await ctx.avatars.add_public(name, photo)


async def _shutdown(app: web.Application) -> None:
    """Close every live connection (websockets, peer connections) and their sessions."""
    ctx = app[CTX]
    ctx.stopping = True
    for close in list(ctx.connections):
        with contextlib.suppress(Exception):
            await close()
    for task in list(ctx.tasks):
        task.cancel()
    if ctx.tasks:
        await asyncio.gather(*ctx.tasks, return_exceptions=True)


async def _cleanup(app: web.Application) -> None:
    app[CTX].avatars.close()
    await app[CTX].engine.aclose()


def json_dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
