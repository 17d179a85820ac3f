"""The procedural driver: speech opens the mouth, silence is calm, windows equal the whole clip."""

from __future__ import annotations

import numpy as np
import pytest

from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.drivers import make_driver
from mmgt.drivers.procedural import ProceduralConfig, ProceduralDriver, _running_percentiles
from mmgt.keypoints import layout
from mmgt.renderers.face_details import EYES, eye_openness
from mmgt.renderers.mouth import mouth_gap
from mmgt.types import AudioFeatures, KeypointSeq
from tests.helpers import synthetic_reference_pose

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"


@pytest.fixture(scope="module")
def reference_pose() -> np.ndarray:
    return synthetic_reference_pose()


@pytest.fixture(scope="module")
def speech_features() -> AudioFeatures:
    return extract_light_features(load_audio(SPEECH))


def test_make_driver_and_protocol():
    d = make_driver("procedural", seed=5)
    assert isinstance(d, ProceduralDriver) and d.config.seed == 5
    with pytest.raises(ValueError, match="unknown driver"):
        make_driver("nope")


def test_output_covers_the_window(reference_pose, speech_features):
    feats = speech_features.frames(100, 160)
    out = ProceduralDriver().generate(feats, reference_pose)
    assert isinstance(out, KeypointSeq)
    assert len(out) == 60 and out.start_frame == 100 and out.frame_size == 512
    # Scores are the reference's.
    np.testing.assert_array_equal(
        out.points[:, :, 2], np.broadcast_to(reference_pose[:, 2], (60, 134))
    )


def test_mouth_follows_speech_and_closes_in_silence(reference_pose, speech_features):
    drv = ProceduralDriver()
    seq = drv.generate(speech_features, reference_pose)
    gaps = np.array([mouth_gap(p) for p in seq.points])
    sig = drv.signals(speech_features)
    act = sig["activity"]
    # Silent: no activity in this frame or the three before (the lips take a moment to close).
    recent = np.max([np.roll(act, k) for k in range(4)], axis=0)
    speaking, silent = act > 0.6, recent < 0.02
    assert speaking.sum() > 100 and silent.sum() > 40
    mouth_w = np.linalg.norm(
        reference_pose[layout.face_index(54), :2] - reference_pose[layout.face_index(48), :2]
    )
    assert gaps[silent].max() < 0.03 * mouth_w  # closed during pauses
    assert gaps[speaking].mean() > 0.12 * mouth_w  # clearly open while speaking
    # Opening tracks the loudness of the voiced band frame by frame.
    loud = speech_features.values[:, 40]
    assert np.corrcoef(gaps, loud)[0, 1] > 0.5


def test_silence_is_calm(reference_pose):
    silence = extract_light_features(np.zeros(16000 * 6, np.float32))
    seq = ProceduralDriver().generate(silence, reference_pose)
    head = seq.points[:, layout.NOSE, :2]
    speech = extract_light_features(load_audio(SPEECH)[: 16000 * 6])
    talking = ProceduralDriver().generate(speech, reference_pose).points[:, layout.NOSE, :2]
    # Idle: the head still breathes and sways a little, but less than while talking.
    assert 0.2 < np.ptp(head[:, 1]) and np.ptp(head, axis=0).max() < np.ptp(talking, axis=0).max()
    # Mouth stays shut; the body breathes (shoulders move a little).
    assert max(mouth_gap(p) for p in seq.points) < 0.5
    assert 0.3 < np.ptp(seq.points[:, layout.R_SHOULDER, 1]) < 4.0


def test_running_percentile_is_numpys_over_each_causal_window():
    x = np.random.default_rng(1).normal(size=40)
    qs = (0.0, 10.0, 95.0, 100.0)
    for q, got in zip(qs, _running_percentiles(x, 7, qs), strict=True):
        want = [np.percentile(x[max(0, i - 6) : i + 1], q) for i in range(len(x))]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def _gaps(features: AudioFeatures, reference_pose: np.ndarray, **config) -> np.ndarray:
    seq = ProceduralDriver(ProceduralConfig(**config)).generate(features, reference_pose)
    return np.array([mouth_gap(p) for p in seq.points])


@pytest.mark.parametrize("gain_db", [-12, -30])
def test_a_quiet_recording_moves_the_mouth_like_a_normal_one(reference_pose, gain_db):
    speech = load_audio(SPEECH)
    normal = _gaps(extract_light_features(speech), reference_pose)
    quiet_features = extract_light_features(speech * np.float32(10 ** (gain_db / 20)))
    quiet = _gaps(quiet_features, reference_pose)
    uncorrected = _gaps(quiet_features, reference_pose, max_boost_db=0)
    assert np.percentile(uncorrected, 90) < 0.8 * np.percentile(normal, 90)  # the old limit
    assert np.percentile(quiet, 90) > 0.85 * np.percentile(normal, 90)
    assert np.corrcoef(quiet, normal)[0, 1] > 0.9  # the same syllables open it


def test_the_level_correction_leaves_noise_and_normal_speech_alone(reference_pose):
    rng = np.random.default_rng(0)
    for noise_db in (-65, -55, -48):  # a quiet room … a noisy one, with nobody speaking
        noise = rng.standard_normal(16000 * 8).astype(np.float32) * 10 ** (noise_db / 20)
        gaps = _gaps(extract_light_features(noise), reference_pose)
        assert gaps.max() < 0.5, f"noise at {noise_db} dBFS opens the mouth"
    # Quiet speech over a noise floor: raised, but its pauses stay shut.
    speech = load_audio(SPEECH) * np.float32(10 ** (-30 / 20))
    noisy = speech + rng.standard_normal(len(speech)).astype(np.float32) * 10 ** (-60 / 20)
    features = extract_light_features(noisy)
    boost = ProceduralDriver().level_boost(features.values[:, 40] * 10 / np.log(10))
    assert 10 <= boost.max() <= 16  # the background (about −60 dBFS) may rise to −45 only
    act = ProceduralDriver().signals(extract_light_features(load_audio(SPEECH)))["activity"]
    pauses = np.max([np.roll(act, k) for k in range(4)], axis=0) < 0.02
    gaps = _gaps(features, reference_pose)
    assert pauses.sum() > 40 and gaps[pauses].max() < 0.5 < np.percentile(gaps, 90)
    # Speech at a normal level is not changed in its louder passages.
    loud = extract_light_features(load_audio(SPEECH)).values[:, 40] * 10 / np.log(10)
    boost = ProceduralDriver().level_boost(loud)
    assert boost[25:].max() == 0.0  # (the first second: digital silence, then the first word)
    assert (loud + boost).max() == loud.max() and (boost[loud > -14] == 0).all()


def test_blinks_happen_at_a_natural_rate(reference_pose, speech_features):
    seq = ProceduralDriver().generate(speech_features, reference_pose)
    ref_open = eye_openness(reference_pose, EYES[0])
    closed = np.array([eye_openness(p, EYES[0]) < 0.3 * ref_open for p in seq.points])
    onsets = np.flatnonzero(closed[1:] & ~closed[:-1])
    minutes = len(seq) / 25 / 60
    assert 8 <= len(onsets) / minutes <= 30  # people blink about 15–20 times a minute
    assert closed.mean() < 0.1  # and each blink is short


def test_windowed_generation_equals_whole_clip(reference_pose, speech_features):
    drv = ProceduralDriver()
    whole = drv.generate(speech_features, reference_pose)
    rng = np.random.default_rng(0)
    parts, start, ctx = [], 0, drv.context_frames
    while start < len(speech_features):
        stop = min(start + int(rng.integers(1, 30)), len(speech_features))
        lo = max(0, start - ctx)
        committed = whole.frames(lo, start) if start > lo else None
        parts.append(drv.generate(speech_features.frames(lo, stop), reference_pose, committed))
        start = stop
    np.testing.assert_array_equal(KeypointSeq.concat(parts).points, whole.points)


def test_seed_changes_idle_motion_only(reference_pose, speech_features):
    a = ProceduralDriver(ProceduralConfig(seed=1)).generate(speech_features, reference_pose)
    b = ProceduralDriver(ProceduralConfig(seed=1)).generate(speech_features, reference_pose)
    c = ProceduralDriver(ProceduralConfig(seed=2)).generate(speech_features, reference_pose)
    np.testing.assert_array_equal(a.points, b.points)
    assert np.abs(a.points - c.points).max() > 0.5
    gaps_a = [mouth_gap(p) for p in a.points]
    gaps_c = [mouth_gap(p) for p in c.points]
    np.testing.assert_allclose(gaps_a, gaps_c, rtol=2e-3, atol=1e-3)  # lips follow the audio


def test_gestures_need_a_visible_wrist(reference_pose, speech_features):
    hidden = reference_pose.copy()
    hidden[[layout.L_WRIST, layout.R_WRIST], 2] = 0.0
    seq = ProceduralDriver().generate(speech_features, hidden)
    # Only breathing moves the (invisible) wrists.
    assert np.ptp(seq.points[:, layout.R_WRIST, 1]) < 4.0
    shown = ProceduralDriver().generate(speech_features, reference_pose)
    assert np.ptp(shown.points[:, layout.R_WRIST, 1]) > np.ptp(seq.points[:, layout.R_WRIST, 1])


def test_bad_inputs(reference_pose, speech_features):
    drv = ProceduralDriver()
    with pytest.raises(ValueError, match="light-v1"):
        drv.generate(AudioFeatures(speech_features.values, kind="other"), reference_pose)
    with pytest.raises(ValueError, match="134"):
        drv.generate(speech_features, reference_pose[:100])
    wrong = KeypointSeq(np.zeros((3, 134, 3), np.float32), start_frame=5)
    with pytest.raises(ValueError, match="committed"):
        drv.generate(speech_features.frames(0, 10), reference_pose, wrong)


def test_an_inner_lip_point_beyond_the_mouth_corner_gives_no_nan(reference_pose, speech_features):
    """Another detector's face (DWPose) may put an inner-lip point beyond a mouth corner."""
    ref = reference_pose.copy()
    ref[layout.FACE_START + 62, 0] = ref[layout.FACE_START + 54, 0] + 10  # beyond the corner
    poses = ProceduralDriver().generate(speech_features, ref)
    assert np.isfinite(poses.points).all()
