"""Training samples drawn as the official data loaders draw them.

Video level (process 2, ``TalkingVideoDataset_move_mask``): the window and the reference frame
are drawn from the starts that leave 2 frames of audio after the window; frames are only
resized (no crop). Image level (process 1, ``HumanDanceDataset``):

* The target frame is at least ``SAMPLE_MARGIN`` frames from the reference frame when the clip
  allows it (the official ``sample_margin``, 25 in its process-1 config), so the network
  learns to move the person rather than copy the reference.
* Target image, its pose image and the reference image (the VAE's input) share one random
  resized crop (area 90–100 %, aspect 0.9–1.0, bilinear back to the training size); the CLIP
  input is the whole reference frame. The official code gets the shared crop by replaying
  torch's random state; here one crop box is drawn and applied to the three.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

SAMPLE_MARGIN = 25
AUDIO_MARGIN = 2  # the video loader's audio_margin
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (0.9, 1.0)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high], both ends included (Python's ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def reference_and_target(n: int, generator: torch.Generator) -> tuple[int, int]:
    """(reference, target) frame indices of an ``n``-frame clip, ``SAMPLE_MARGIN`` apart if they
    can be (the official rule: after the reference if there is room, else before it)."""
    margin = min(SAMPLE_MARGIN, n)
    ref = _randint(0, n - 1, generator)
    if ref + margin < n:
        return ref, _randint(ref + margin, n - 1, generator)
    if ref - margin > 0:
        return ref, _randint(0, ref - margin, generator)
    return ref, _randint(0, n - 1, generator)


def video_window(n: int, frames: int, generator: torch.Generator) -> tuple[int, int]:
    """(window start, reference) for the video level, as the official talking-video loader: both
    drawn so that ``AUDIO_MARGIN`` frames of audio follow the window (its ±2-frame wav2vec2
    windows then read real audio), or anywhere the window fits in a clip too short for that."""
    high = n - frames - AUDIO_MARGIN - 1
    if high < 0:
        high = n - frames
    return _randint(0, high, generator), _randint(0, high, generator)


def crop_box(size: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop of a ``size``² image (torchvision's
    ``RandomResizedCrop.get_params`` rule: ten tries, then the whole image)."""
    area = size * size
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        aspect = math.exp(low + u[1] * (high - low))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= size and 0 < h <= size:
            return _randint(0, size - h, generator), _randint(0, size - w, generator), h, w
    return 0, 0, size, size


def apply_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(R, R, C) uint8 → the box's content resized back to (R, R, C), bilinear."""
    top, left, h, w = box
    size = image.shape[0]
    part = np.ascontiguousarray(image[top : top + h, left : left + w])
    return cv2.resize(part, (size, size), interpolation=cv2.INTER_LINEAR)
