"""Shared engine resources and the session factory.

An :class:`Engine` holds what all sessions share: the driver's weights, the renderer, the
per-avatar render state (prepared once, read-only, cached by content hash), the worker pool and
the thread budget. ``open_session`` gives each stream its own driver view, render stream,
scheduler and :class:`~engine.session.Session`.
"""

from __future__ import annotations

import collections
import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from engine.clock import Clock, MonotonicClock
from engine.metrics import EngineMetrics
from engine.scheduler import StreamScheduler, StreamSettings
from engine.session import Session
from engine.vad import VoiceActivity
from mmgt.drivers import default_driver_name, make_driver
from mmgt.drivers.controls import MotionControls
from mmgt.drivers.hop import live_context
from mmgt.renderers import make_renderer
from mmgt.types import Avatar, Driver, Renderer


@dataclass(frozen=True)
class EngineConfig:
    """What every session of an engine shares.

    Attributes:
        driver: ``procedural``, ``smga`` or ``auto`` (the shipped default).
        driver_options: passed to :func:`mmgt.drivers.make_driver` (weights, steps, …).
        renderer: render backend name; ``renderer_options`` go to ``make_renderer``.
        stream: default per-session scheduler settings.
        workers: worker threads for model/render work (default: the machine's cores).
        intra_op_threads: torch intra-op threads (1: sessions scale across cores instead).
        max_avatars: prepared avatar states kept in the cache.
        seed: sampling seed.
    """

    driver: str = "auto"
    driver_options: dict = field(default_factory=dict)
    renderer: str = "warp"
    renderer_options: dict = field(default_factory=dict)
    stream: StreamSettings = field(default_factory=StreamSettings)
    workers: int | None = None
    intra_op_threads: int = 1
    max_avatars: int = 16
    seed: int = 0


def live_driver_options(name: str, options: dict) -> dict:
    """SMGA live: one DDIM step unless told otherwise (the window's context is set later).

    In live windows one step is as good as two (test split, 40 clips, hop 4: lip r 0.79 vs
    0.76, lip L2 1.56 vs 1.59 px) at half the cost."""
    if name != "smga":
        return options
    opts = dict(options)
    opts.setdefault("steps", 1)
    return opts


class Engine:
    """Shared resources; open one :class:`Session` per stream."""

    def __init__(self, config: EngineConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if cfg.intra_op_threads > 0:
            import torch

            torch.set_num_threads(cfg.intra_op_threads)
        import cv2
        from threadpoolctl import threadpool_limits

        # Parallelism comes from sessions, not from inside one frame: OpenCV and BLAS threads
        # would oversubscribe the cores (the warp runs 8× slower with them on a busy machine).
        cv2.setNumThreads(1)
        threadpool_limits(limits=max(cfg.intra_op_threads, 1))
        self.workers = cfg.workers or os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="engine")
        self.clock = clock or MonotonicClock()
        self.driver_name = default_driver_name() if cfg.driver == "auto" else cfg.driver
        options = live_driver_options(self.driver_name, cfg.driver_options)
        self._driver: Driver = make_driver(self.driver_name, seed=cfg.seed, **options)
        self._fit_smga_context(self._driver, cfg.stream)
        self.renderer: Renderer = make_renderer(cfg.renderer, **cfg.renderer_options)
        self._states: collections.OrderedDict[str, object] = collections.OrderedDict()
        self._states_lock = threading.Lock()
        self.sessions: set[Session] = set()
        self.metrics = EngineMetrics(lambda: tuple(self.sessions))

    @staticmethod
    def _fit_smga_context(driver: Driver, stream: StreamSettings) -> None:
        window = getattr(driver, "window", None)
        if window is None or not hasattr(driver, "settings"):
            return
        context = live_context(window, stream.hop_frames, stream.lookahead_frames)
        driver.settings = replace(driver.settings, context=context)
        driver.context_frames = context

    def avatar_state(self, avatar: Avatar) -> object:
        """The renderer's prepared state for ``avatar`` (computed once, then cached); also
        measures the driver's per-avatar lip bias (:mod:`mmgt.drivers.lip_bias`) ahead of the
        session."""
        with self._states_lock:
            state = self._states.get(avatar.key)
            if state is not None:
                self._states.move_to_end(avatar.key)
                return state
        state = self.renderer.prepare(avatar)  # outside the lock: may take a while
        if getattr(self._driver, "correct_lip_bias", False):  # once per avatar, ahead of the
            self._driver.lip_bias(avatar.reference_pose, avatar.frame_size)  # live windows
        with self._states_lock:
            self._states[avatar.key] = state
            while len(self._states) > self.config.max_avatars:
                self._states.popitem(last=False)
        return state

    def open_session(
        self,
        avatar: Avatar,
        *,
        input_rate: int = 16000,
        channels: int = 1,
        settings: StreamSettings | None = None,
        idle: bool = True,
        name: str = "session",
        state: object | None = None,
        motion: MotionControls | None = None,
    ) -> Session:
        """A new session for ``avatar`` (call from the event loop). ``state`` may be a
        precomputed :meth:`avatar_state` (prepare it in a worker to keep the loop free);
        ``motion`` scales its head, gesture, mouth and blink motion
        (:meth:`Session.set_motion` changes it later)."""
        settings = settings or self.config.stream
        if state is None:
            state = self.avatar_state(avatar)
        driver = copy.copy(self._driver)  # shares the weights; settings are per session
        renderer = self.renderer
        scheduler = StreamScheduler(
            driver,
            lambda: renderer.open_stream(state),
            avatar.reference_pose,
            avatar.frame_size,
            input_rate=input_rate,
            channels=channels,
            settings=settings,
            needs_masks=renderer.needs_masks,
            needs_audio=renderer.needs_audio,
            audio_kind=getattr(renderer, "audio_kind", "light-v1"),
            vad_factory=VoiceActivity,
            observe=self.metrics.observe_stage,
            motion=motion,
        )
        session = Session(
            scheduler,
            executor=self.executor,
            clock=self.clock,
            idle=idle,
            name=name,
            on_close=self.sessions.discard,
            on_latency=self.metrics.latency_seconds.observe,
        )
        self.sessions.add(session)
        self.metrics.sessions_total.inc()
        return session

    async def aclose(self) -> None:
        """Close every session and stop the worker pool."""
        for s in list(self.sessions):
            await s.aclose()
        self.executor.shutdown(wait=True, cancel_futures=True)
