"""Prometheus metrics for an engine and its sessions.

Global histograms (per-stage time, audio-to-frame latency) are observed as work happens;
per-session figures (frames, fps, drops, quality level, buffered audio) are read from the live
sessions at scrape time, so a closed session disappears from ``/metrics`` by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.scheduler import SPEECH_RATE

STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)


class EngineMetrics:
    """A registry of its own (no process globals), rendered as Prometheus text."""

    def __init__(self, sessions: Callable[[], Iterable] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram(
            "mmgt_stage_seconds",
            "Time per stage call (render: per frame)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "mmgt_latency_seconds",
            "Audio chunk arrival to hand-over of the first encoded frame showing it",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sessions_total = Counter(
            "mmgt_sessions_opened", "Sessions opened", registry=self.registry
        )
        self.refused_total = Counter(
            "mmgt_sessions_refused", "Sessions refused (admission control)", registry=self.registry
        )
        self.errors_total = Counter(
            "mmgt_client_errors", "Bad requests and messages", ["kind"], registry=self.registry
        )
        self.max_sessions = Gauge("mmgt_max_sessions", "Admission limit", registry=self.registry)
        self.registry.register(_SessionCollector(sessions))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SessionCollector(Collector):
    def __init__(self, sessions: Callable[[], Iterable]) -> None:
        self._sessions = sessions
        self._fps_state: dict[str, tuple[float, int]] = {}

    def collect(self):  # noqa: ANN201
        live = list(self._sessions())
        active = GaugeMetricFamily("mmgt_sessions", "Sessions open now")
        active.add_metric([], len(live))
        yield active
        frames = CounterMetricFamily("mmgt_session_frames", "Frames emitted", labels=["session"])
        drops = CounterMetricFamily(
            "mmgt_session_dropped_frames", "Frames dropped (interrupts)", labels=["session"]
        )
        skipped = CounterMetricFamily(
            "mmgt_session_skipped_frames",
            "Late video frames the transport skipped to stay live",
            labels=["session"],
        )
        held = CounterMetricFamily(
            "mmgt_session_held_frames", "Frames held under load", labels=["session"]
        )
        level = GaugeMetricFamily(
            "mmgt_session_quality_level", "0 full … 3 hold", labels=["session"]
        )
        buffered = GaugeMetricFamily(
            "mmgt_session_buffered_seconds", "Audio queued ahead of playback", labels=["session"]
        )
        idle = CounterMetricFamily(
            "mmgt_session_idle_seconds",
            "Silence filled in while no audio arrived",
            labels=["session"],
        )
        late = CounterMetricFamily(
            "mmgt_session_late_audio_made_up_seconds",
            "Filled-in silence that turned out to stand in for late audio, made up by leaving "
            "out quiet audio (quiet) or by time compression (compressed)",
            labels=["session", "method"],
        )
        fps = GaugeMetricFamily(
            "mmgt_session_fps", "Frames per second since the last scrape", labels=["session"]
        )
        now = time.monotonic()
        seen = {}
        for s in live:
            name = s.name
            n = s.stats.frames_out
            frames.add_metric([name], n)
            drops.add_metric([name], s.stats.dropped_frames)
            skipped.add_metric([name], s.stats.skipped_frames)
            held.add_metric([name], s.scheduler.counters["held_frames"])
            level.add_metric([name], s.scheduler.level)
            buffered.add_metric([name], s.scheduler.buffered_s)
            counts = s.scheduler.counters
            idle.add_metric([name], counts["idle_samples"] / SPEECH_RATE)
            compressed = counts["late_samples_compressed"]
            late.add_metric(
                [name, "quiet"], (counts["late_samples_made_up"] - compressed) / SPEECH_RATE
            )
            late.add_metric([name, "compressed"], compressed / SPEECH_RATE)
            last = self._fps_state.get(name)
            if last is not None and now > last[0]:
                fps.add_metric([name], (n - last[1]) / (now - last[0]))
            seen[name] = (now, n)
        self._fps_state = seen
        yield from (frames, drops, skipped, held, level, buffered, idle, late, fps)
