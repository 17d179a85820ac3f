"""Process-1 sampling as the official image-level loader: reference–target margin, shared crop."""

from __future__ import annotations

import numpy as np
import torch

from mmgt.train import stage2_augment as aug
from mmgt.train.stage2_data import Stage2Clips, find_clips, generate_clips
from mmgt.weights.stage2_models import Stage2Models


def test_the_target_is_a_margin_away_from_the_reference_when_it_can_be() -> None:
    g = torch.Generator().manual_seed(0)
    pairs = [aug.reference_and_target(100, g) for _ in range(2000)]
    assert all(abs(t - r) >= aug.SAMPLE_MARGIN for r, t in pairs)
    assert any(t < r for r, t in pairs) and any(t > r for r, t in pairs)
    assert {r for r, _ in pairs} == set(range(100))
    short = [aug.reference_and_target(10, g) for _ in range(500)]  # too short for a margin
    assert any(r == t for r, t in short) and all(0 <= t < 10 for _, t in short)


def test_crop_boxes_keep_90_to_100_percent_of_the_image() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(500):
        top, left, h, w = aug.crop_box(128, g)
        assert 0 <= top and top + h <= 128 and 0 <= left and left + w <= 128
        assert 0.88 <= h * w / 128**2 <= 1.0 and 0.88 <= w / h <= 1.02
    image = np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3)
    assert np.array_equal(aug.apply_crop(image, (0, 0, 128, 128)), image)


def test_process_one_batches_share_one_crop_and_keep_the_clip_input_whole(tmp_path) -> None:
    generate_clips(tmp_path, 1, size=128, frames=40, seed=3)
    models = Stage2Models.random("tiny", seed=0)
    plain = Stage2Clips(find_clips(tmp_path), models, frames=1, audio=False)
    cropped = Stage2Clips(find_clips(tmp_path), models, frames=1, audio=False, augment=True)
    a = plain.batch(torch.Generator().manual_seed(5), 4)
    b = cropped.batch(torch.Generator().manual_seed(5), 4)
    # The same frames were drawn (the crop is drawn after them); the CLIP input is whole.
    assert all(np.array_equal(x, y) for x, y in zip(a.reference_images, b.reference_images,
                                                    strict=True))  # fmt: skip
    assert not torch.equal(a.frames, b.frames) and not torch.equal(a.reference, b.reference)
    # Reference and target come from frames ≥ 25 apart: they differ.
    assert all(not torch.equal(f[0], r) for f, r in zip(a.frames, a.reference, strict=True))


def test_video_windows_leave_two_frames_of_audio_after_them() -> None:
    g = torch.Generator().manual_seed(2)
    draws = [aug.video_window(16, 8, g) for _ in range(300)]
    assert {s for s, _ in draws} == set(range(6)) == {r for _, r in draws}  # 16 − 8 − 2 − 1 = 5
    short = [aug.video_window(9, 8, g) for _ in range(100)]  # no room for the margin
    assert {s for s, _ in short} == {0, 1}
