"""A trained model's closed-mouth bias, measured per avatar and taken off its output.

The CPU SMGA model was trained on references built from one face whose mouth is open in a
smile, and it closes a mouth by raising the lower lip by about what closing hers takes: on a
closed-mouth photo its silent mouth is "past closed" (the inner lower lip above the upper one,
by up to 9 px at 512²), and on a photo open wider than hers it stays half open. So once per
avatar the driver generates a few seconds of silence and measures the inner-lip gap. When even
its widest silent frames are past closed, it lowers the lower lip and the jaw of everything it
generates for that avatar until those frames just close (when the median is open beyond
:data:`TOLERANCE`, it raises them by the excess), as the rig opens a mouth: silence then rests
closed and speech opens the mouth further. A silent mouth that is closed or a little open is
left as it is.
"""

from __future__ import annotations

import logging

import numpy as np

from mmgt.audio.features import extract_light_features
from mmgt.audio.gate import gate_features
from mmgt.drivers.rig import across_mouth, inner_gap, lower_jaw, mouth_width
from mmgt.keypoints import layout
from mmgt.types import AudioFeatures

log = logging.getLogger(__name__)

SILENCE_SECONDS = 4.0
TOLERANCE = 0.05  # mouth widths of open silent gap left as the model made it
WIDEST = 75  # percentile of the silent gap that should just close
MAX_CORRECTION = 0.3  # mouth widths: about the widest speech opening
CACHE_SIZE = 64  # avatars remembered per driver
_INNER_LOWER = layout.face_index(np.array([65, 66, 67]))


def silence(feature_kind: str, gated: bool) -> AudioFeatures:
    """The features of digital silence (light-v1 only), through the speech gate if the driver's
    features pass it."""
    if feature_kind != "light-v1":
        raise ValueError(f"no silence features for {feature_kind}")
    features = extract_light_features(np.zeros(int(16000 * SILENCE_SECONDS), np.float32))
    return gate_features(features) if gated else features


def correction(silent_poses: np.ndarray, reference: np.ndarray) -> float:
    """Mouth widths to lower the lower lip by (negative: raise), from (T, 134, ≥2) poses the model
    made for silence and their (134, ≥2) reference. A silent mouth past closed even at its
    widest (:data:`WIDEST` percentile of the gap) is lowered until those frames just close, so
    it rests closed and the model's jitter does not open it; one whose median is open beyond
    :data:`TOLERANCE` is raised by the excess (a little open is how people rest)."""
    gaps = np.array([inner_gap(p) for p in silent_poses]) / mouth_width(reference)
    widest, median = float(np.percentile(gaps, WIDEST)), float(np.median(gaps))
    value = -widest if widest < 0 else -max(median - TOLERANCE, 0.0)
    if abs(value) > MAX_CORRECTION:  # a model this far off is not biased but broken
        log.warning("the model's silent mouth is %.2f mouth widths off; corrected by %.2f only",
                    -value, MAX_CORRECTION)  # fmt: skip
        value = float(np.clip(value, -MAX_CORRECTION, MAX_CORRECTION))
    return value


def apply(
    poses: np.ndarray, reference: np.ndarray, mouth_widths: float, undo: bool = False
) -> None:
    """Take the bias off (T, 134, ≥2) ``poses`` in place (``undo``: put it back)."""
    if mouth_widths:
        # Scaled so the inner gap (the middle three points, not quite at full weight) changes
        # by exactly the correction.
        reach = across_mouth(reference, _INNER_LOWER).mean()
        pixels = mouth_widths * mouth_width(reference) / max(float(reach), 0.2)
        lower_jaw(poses, reference, -pixels if undo else pixels)
