"""SMGA training smoke test (tiny preset, CPU) and the SMGA driver's windowed continuation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers import make_driver, pose_space
from mmgt.drivers.procedural import ProceduralConfig, ProceduralDriver
from mmgt.drivers.smga import SamplerSettings, SMGADriver, join_offsets
from mmgt.errors import InputError
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, preset
from mmgt.train.smga_train import TrainConfig, WindowSampler, train_smga
from mmgt.types import KeypointSeq
from mmgt.weights.smga import load_smga_safetensors
from tests.helpers import synthetic_reference_pose

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"


@pytest.fixture(scope="module")
def reference_pose() -> np.ndarray:
    return synthetic_reference_pose()


def _features(audio: np.ndarray) -> np.ndarray:
    return extract_light_features(audio).values


@pytest.fixture(scope="module")
def clips(reference_pose):
    """Two clips whose 'ground truth' comes from the procedural driver (a stand-in corpus)."""
    audio = load_audio(SPEECH)
    out = []
    for seed, (a, b) in enumerate(((0, 8), (8, 17))):
        seg = audio[a * 16000 : b * 16000]
        drv = ProceduralDriver(ProceduralConfig(seed=seed))
        kp = drv.generate(extract_light_features(seg), reference_pose).points
        out.append((seg, kp, reference_pose))
    return out


@pytest.mark.slow
def test_tiny_training_runs_resumes_and_improves(tmp_path, clips):
    cfg = preset("tiny")
    train = WindowSampler(clips, cfg.frames, _features)
    val = WindowSampler(clips[1:], cfg.frames, _features)
    tc = TrainConfig(steps=60, batch=8, eval_every=30, eval_windows=16, log_every=1000, lr=1e-3,
                     warmup=20)  # fmt: skip
    first = train_smga(cfg, train, val, tmp_path, tc)
    hist = first["history"]
    assert [h["step"] for h in hist] == [30, 60]
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "last.pt").is_file()
    # Past the warm-up too, the state holds only what a plain weights_only load accepts.
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert type(state["optimizer"]["param_groups"][0]["lr"]) is float
    # Resume: continue to 90 steps from last.pt.
    tc.steps = 90
    second = train_smga(cfg, train, val, tmp_path, tc, resume=True)
    assert [h["step"] for h in second["history"]] == [30, 60, 90]
    assert second["best_val_loss"] <= first["best_val_loss"]
    # Validation loss falls well below an untrained model's.
    pkg = load_smga_safetensors(tmp_path / "best.safetensors")
    assert pkg.metadata["feature_kind"] == "light-v1" and pkg.audio_mean.shape == (43,)
    assert pkg.metadata["residual_anchor"] == "reference"
    untrained = train_smga(cfg, train, val, tmp_path / "u", TrainConfig(steps=1, batch=2,
                           eval_every=1, eval_windows=16, log_every=1000))  # fmt: skip
    assert second["best_val_loss"] < 0.7 * untrained["best_val_loss"]


def test_smga_driver_windows_join_and_continue(reference_pose):
    torch.manual_seed(0)
    model = SMGA(preset("tiny"))
    feats = extract_light_features(load_audio(SPEECH)[: 16000 * 3])  # 75 frames, 16-frame windows
    drv = SMGADriver(model, feature_kind="light-v1",
                     settings=SamplerSettings(steps=3, eta=0.0, context=4, seed=1))  # fmt: skip
    whole = drv.generate(feats, reference_pose)
    assert len(whole) == len(feats) and whole.start_frame == 0
    assert np.isfinite(whole.points).all()
    np.testing.assert_array_equal(
        whole.points[:, :, 2], np.broadcast_to(reference_pose[:, 2], (75, 134))
    )
    # Continuing from committed frames: those frames are kept exactly, new frames follow them.
    committed = whole.frames(0, 20)
    more = drv.generate(feats.frames(0, 40), reference_pose, committed)
    assert more.start_frame == 20 and len(more) == 20
    again = drv.generate(feats.frames(0, 40), reference_pose, committed)
    np.testing.assert_array_equal(more.points, again.points)  # seeded per window: reproducible
    # The sampler pinned the context: the window's first frames equal the committed ones.
    norm = layout.normalize(committed.points)[-4:]
    assert np.abs(layout.denormalize(norm) - committed.points[-4:]).max() < 1e-3
    with pytest.raises(ValueError, match="light-v1"):
        SMGADriver(model, feature_kind="official-wavlm-edge").generate(feats, reference_pose)


def test_non_finite_model_outputs_hold_the_previous_pose(reference_pose, monkeypatch, caplog):
    """An fp16 overflow (NaN or inf from the model) must not reach the renderer."""
    torch.manual_seed(0)
    drv = SMGADriver(SMGA(preset("tiny")), feature_kind="light-v1",
                     settings=SamplerSettings(steps=1, eta=0.0, context=4, seed=1))  # fmt: skip
    feats = extract_light_features(load_audio(SPEECH)[: 16000 * 2])
    sample = drv._sample
    calls = []

    def overflowing(audio, cond, known, first):  # noqa: ANN001, ANN202
        window, guess = sample(audio, cond, known, first)
        calls.append(first)
        if len(calls) == 2:  # the second window overflows from its 6th frame on
            window[5:, :10] = np.nan
            window[7, 20] = np.inf
        return window, guess

    monkeypatch.setattr(drv, "_sample", overflowing)
    poses = drv.generate(feats, reference_pose)
    assert np.isfinite(poses.points).all() and drv.nonfinite_values > 0
    assert "non-finite" in caplog.text
    bad = calls[1] + 5  # first bad frame: its first 10 values hold the frame before
    np.testing.assert_allclose(poses.points[bad, :3, :2], poses.points[bad - 1, :3, :2], atol=1e-4)


def test_training_from_the_closed_mouth_anchor(tmp_path, clips, reference_pose):
    """``--residual-anchor closed-mouth``: the weights say so, and the driver that loads them
    measures motion from the closed mouth (a silent target is no motion at all)."""
    cfg = preset("tiny")
    train = WindowSampler(clips, cfg.frames, _features)
    tc = TrainConfig(steps=2, batch=2, eval_every=2, eval_windows=4, log_every=1000,
                     residual_anchor="closed-mouth")  # fmt: skip
    train_smga(cfg, train, WindowSampler(clips[1:], cfg.frames, _features), tmp_path, tc)
    path = tmp_path / "best.safetensors"
    assert load_smga_safetensors(path).metadata["residual_anchor"] == "closed-mouth"
    drv = make_driver("smga", weights=path, steps=1)
    assert drv.residual_anchor == "closed-mouth"
    # A file trained here records no sampler: it gets the shipped model's, not the official
    # guidance 2 (which doubles the model's frame-by-frame response to the audio).
    assert (drv.settings.guidance, drv.settings.eta, drv.settings.context) == (1.0, 0.0, 8)
    out = drv.generate(extract_light_features(load_audio(SPEECH)[:32000]), reference_pose)
    assert np.isfinite(out.points).all()
    with pytest.raises(InputError, match="unknown residual anchor 'open'"):
        SMGADriver(SMGA(cfg), feature_kind="light-v1", residual_anchor="open")


def test_join_offsets_fade_the_miss_and_spare_the_mouth():
    miss = np.ones(layout.OFFICIAL_DIM, np.float32)
    miss[0] = np.nan
    off = join_offsets(miss, 6, fade=4)
    assert off.shape == (6, layout.OFFICIAL_DIM) and off.dtype == np.float32
    body = ~pose_space.MOUTH_XY & (np.arange(layout.OFFICIAL_DIM) % 3 < 2)  # x, y only
    body[0] = False
    np.testing.assert_allclose(off[:, body], np.repeat([[0.8], [0.6], [0.4], [0.2], [0], [0]],
                                                       body.sum(), axis=1))  # fmt: skip
    assert not off[:, ~body].any()  # the mouth, scores, and the non-finite value
    assert not join_offsets(miss, 6, fade=0).any()


def test_new_frames_are_taken_onto_the_committed_ones(reference_pose, monkeypatch):
    """With one step the context is invisible through the noise: the new frames are moved by
    the model's miss on the last committed frame, faded out over ``join_fade`` frames."""
    torch.manual_seed(0)
    feats = extract_light_features(load_audio(SPEECH)[: 16000 * 2])
    committed = KeypointSeq(np.repeat(reference_pose[None], 20, 0), 512, feats.fps, 0)
    model, runs = SMGA(preset("tiny")), {}
    for fade in (0, 4):
        settings = SamplerSettings(steps=1, eta=0.0, context=4, join_fade=fade)
        drv = SMGADriver(model, feature_kind="light-v1", settings=settings)
        sample, seen = drv._sample, []

        def recording(*args, sample=sample, seen=seen):  # noqa: ANN002, ANN202
            seen.append(sample(*args))
            return seen[-1]

        monkeypatch.setattr(drv, "_sample", recording)
        poses = drv.generate(feats.frames(0, 30), reference_pose, committed)
        runs[fade] = (layout.normalize(poses.points), seen[0])
    (plain, (window, guess)), (joined, _) = runs[0], runs[4]
    miss = window[3] - guess[3]  # the last committed frame minus the model's x̂0 of it
    np.testing.assert_allclose(joined.reshape(10, -1) - plain.reshape(10, -1),
                               join_offsets(miss, 10, 4), atol=1e-5)  # fmt: skip
    last = layout.normalize(reference_pose).reshape(-1)
    body = ~pose_space.MOUTH_XY & (np.arange(layout.OFFICIAL_DIM) % 3 < 2)
    gap = lambda p: np.abs(p.reshape(10, -1)[0, body] - last[body]).mean()  # noqa: E731
    assert gap(joined) < gap(plain)
    with pytest.raises(InputError, match="join fade"):
        SamplerSettings(join_fade=-1)


def test_join_fade_is_a_driver_setting():
    assert make_driver("smga").settings.join_fade == SamplerSettings.join_fade == 4
    assert make_driver("smga", join_fade=0).settings.join_fade == 0
    with pytest.raises(InputError, match="join fade"):
        make_driver("smga", join_fade=-2)


def test_live_windows_join_without_jumps():
    """The shipped model in live windows (1 step, 4 new frames each): without the join the
    points it moves (all but the mouth) accelerated 1.5× as much at a window's first frame as
    elsewhere; with it, about as much as anywhere."""
    from mmgt.drivers.hop import HopDriver, live_context

    feats = extract_light_features(load_audio(BUNDLED_AVATAR.parent / "speech_sample.wav"))
    feats = feats.frames(0, 200)
    reference = load_avatar().reference_pose
    joined = ~pose_space.MOUTH_XY[0::3] & ~pose_space.MOUTH_XY[1::3]  # (134,) points moved
    ratios = {}
    for fade in (0, 4):
        drv = make_driver("smga", steps=1, context=live_context(32, 4, 0), join_fade=fade,
                          ambient=False, lip_bias=False)  # fmt: skip
        points = HopDriver(drv, hop=4).generate(feats, reference).points[:, joined, :2]
        acc = np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1).mean(1)
        at_join = (np.arange(1, len(points) - 1) % 4) == 0  # first frame of a window
        ratios[fade] = acc[at_join].mean() / acc[~at_join].mean()
    assert ratios[0] > 1.4 and ratios[4] < 1.1  # measured 1.54 and 0.89 (previous model 1.69)
