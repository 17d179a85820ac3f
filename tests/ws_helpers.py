"""Helpers for tests that talk to the server over the websocket API."""

from __future__ import annotations

import cv2
import numpy as np
from aiohttp.test_utils import TestClient

from tests.browser_analysis import envelope_lag


def ws_url(client: TestClient) -> str:
    return str(client.make_url("/ws")).replace("http", "ws", 1)


def mouth_opening(frames: list[np.ndarray], box: list[int]) -> np.ndarray:
    """Darkness of the mouth box per frame (the painted mouth interior is dark)."""
    x0, y0, x1, y1 = box
    return np.array(
        [255.0 - cv2.cvtColor(f[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).mean() for f in frames]
    )


def mouth_change(frames: list[np.ndarray], box: list[int], quiet: np.ndarray) -> np.ndarray:
    """How far each frame's mouth box is from the mouth at rest (the per-pixel median over the
    ``quiet`` frames), in grey levels: opening whatever the photo's mouth looks like (a smile
    that shows its teeth brightens as it opens where a closed mouth darkens)."""
    x0, y0, x1, y1 = box
    grey = np.stack([cv2.cvtColor(f[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY) for f in frames])
    rest = np.median(grey[quiet], axis=0)
    return np.abs(grey - rest).mean(axis=(1, 2))


async def assert_lips_follow_audio(
    client: TestClient, frames: list[np.ndarray], back: np.ndarray
) -> None:
    """The mouth opening of ``frames`` (change from the mouth at rest: the quietest fifth of
    the frames) follows the envelope of the audio that came with them (``back``, 16 kHz):
    correlated, and the cross-correlation peak (parabola-refined, the browser test's measure)
    within 40 ms."""
    resp = await client.get("/avatars/default")
    box = (await resp.json())["mouth_box"]
    size = frames[0].shape[0]
    box = [v * size // 512 for v in box] if max(box) > size else box
    n = len(frames)
    envelope = np.sqrt((back[: n * 640].reshape(n, 640) ** 2).mean(1))
    opening = mouth_change(frames, box, envelope <= np.percentile(envelope, 20))
    lag, corr = envelope_lag(envelope, opening)
    assert np.corrcoef(opening, envelope)[0, 1] > 0.3 and corr > 0.3
    assert abs(40 * lag) <= 40, f"mouth {40 * lag:+.0f} ms behind the audio envelope"
