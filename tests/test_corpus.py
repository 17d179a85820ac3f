"""The synthetic speech–motion corpus: format, lip sync, resumability, splits, augmentation, poses
and real-video preparation."""

from __future__ import annotations

import json
import math
import shutil

import av
import numpy as np
import pytest
import soundfile as sf

from mmgt.audio import load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_image
from mmgt.drivers import rig
from mmgt.errors import InputError
from mmgt.keypoints import layout
from mmgt.train.corpus import augmentation as aug
from mmgt.train.corpus import format as fmt
from mmgt.train.corpus import generate as gen
from mmgt.train.corpus import tts
from mmgt.train.corpus.align import Aligner, AlignmentError
from mmgt.train.corpus.cli import add_cli, run_cli
from mmgt.train.corpus.lips import LipConfig
from mmgt.train.corpus.poses import random_reference, reference_poses, validate_reference
from mmgt.train.corpus.texts import SentenceGenerator, number_words, words_for_alignment

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"
SEED = 3
LEAD_S = LipConfig().lead_s
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("corpus")
    summary = gen.generate_corpus(root, 3, SEED, engines=["espeak-ng"], progress=False)
    return root, summary


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(SPEECH)[: 16000 * 3]


def _gap(keypoints: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Inner-lip gap of every frame in mouth widths of the reference."""
    return np.array([rig.inner_gap(p) for p in keypoints]) / rig.mouth_width(reference)


# --- generation and format -------------------------------------------------------------------
def test_manifest_and_files(corpus):
    root, summary = corpus
    assert summary["written"] + summary["skipped"] == 3 and summary["written"] >= 2
    clips = fmt.read_corpus(root)
    assert len(clips) == summary["written"]
    for clip in clips:
        assert clip.split in ("train", "val", "test") and clip.engine == "espeak-ng"
        assert clip.fps == 25 and clip.sample_rate == 16000 and clip.synthetic is True
        assert clip.text and clip.voice and clip.rate and clip.pitch is not None
        assert (root / clip.audio).is_file() and (root / clip.motion).is_file()
    lines = (root / fmt.MANIFEST).read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == {c.id for c in clips}


def test_audio_keypoints_and_phones(corpus):
    root, _ = corpus
    for clip in fmt.read_corpus(root):
        info = sf.info(root / clip.audio)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, keypoints, reference = clip.load()
        frames = math.ceil(len(audio) / 640)
        assert keypoints.shape == (frames, 134, 3) and keypoints.dtype == np.float32
        assert np.isfinite(keypoints).all() and reference.shape == (134, 3)
        assert abs(clip.seconds - len(audio) / 16000) < 1e-3
        data = clip.motion_data()
        phones = data["phones"]
        assert len(phones) > 5 and (phones["phone"] != "SIL").sum() > 5
        assert phones["start_s"][0] == 0 and abs(phones["end_s"][-1] - clip.seconds) < 0.02
        assert np.all(phones["end_s"] > phones["start_s"])
        assert np.allclose(phones["start_s"][1:], phones["end_s"][:-1], atol=1e-4)
        assert len(data["words"]) == len(words_for_alignment(clip.text))
        curves = clip.curves()
        assert len(curves) == frames
        np.testing.assert_allclose(rig.pose_sequence(reference, curves), keypoints, atol=1e-3)


def test_lip_sync(corpus):
    """Mouth opening follows speech energy, and is closed in pauses and on p/b/m."""
    root, _ = corpus
    for clip in fmt.read_corpus(root):
        audio, keypoints, reference = clip.load()
        gap = _gap(keypoints, reference)
        frames = len(keypoints)
        x = np.pad(audio, (0, frames * 640 - len(audio))).reshape(frames, 640)
        db = 10 * np.log10(np.mean(x.astype(np.float64) ** 2, axis=1) + 1e-10)
        db = np.maximum(db, db.max() - 50)
        assert np.corrcoef(gap, db)[0, 1] > 0.4
        for p in clip.motion_data()["phones"]:
            start, end = float(p["start_s"]), float(p["end_s"])
            if p["phone"] == "SIL" and end - start >= 0.3:  # inside pauses
                a, b = math.ceil((start + 0.1) * 25), math.floor((end - 0.1) * 25)
                assert b <= a or gap[a:b].max() <= 0.03
            if p["phone"] in ("P", "B", "M"):  # lips meet (the motion leads the audio)
                a, b = int((start - LEAD_S) * 25), math.ceil((end - LEAD_S) * 25)
                assert gap[a : max(b, a + 1)].min() <= 0.03


def test_resume_writes_nothing_new(corpus):
    root, _ = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = gen.generate_corpus(root, 3, SEED, engines=["espeak-ng"], progress=False)
    assert again["written"] == 0 and again["already_done"] == 3
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_interrupted_clip_is_recovered(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    lines = (copy / fmt.MANIFEST).read_text().splitlines()
    (copy / fmt.MANIFEST).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # torn line
    summary = gen.generate_corpus(copy, 3, SEED, engines=["espeak-ng"], progress=False)
    assert summary["written"] == 0 and summary["recovered"] == 1
    assert [c.id for c in fmt.read_corpus(copy)] == [c.id for c in fmt.read_corpus(root)]


@needs_espeak
def test_failures_are_skipped_not_fatal(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise tts.TTSError("engine exploded")

    monkeypatch.setattr(gen.tts, "synthesize", broken)
    summary = gen.generate_corpus(tmp_path, 2, 0, engines=["espeak-ng"], progress=False)
    assert summary["written"] == 0 and summary["skipped"] == 2
    reasons = [json.loads(x)["reason"] for x in (tmp_path / fmt.SKIPPED).read_text().splitlines()]
    assert all("engine exploded" in r for r in reasons)
    assert (
        gen.generate_corpus(tmp_path, 2, 0, engines=["espeak-ng"], progress=False)["already_done"]
        == 2
    )  # not retried unless asked


def test_unknown_engine_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown TTS engines"):
        gen.generate_corpus(tmp_path, 1, 0, engines=["festival"], progress=False)


def test_held_out_voices_never_in_train_or_val():
    engines = ["espeak-ng", "flite"]
    held = {e: {v.name for v in tts.voices(e) if v.held_out} for e in engines}
    assert held["flite"] == {"rms"} and len(held["espeak-ng"]) > 50
    splits = set()
    for i in range(600):
        plan = gen.plan_clip(7, i, engines)
        assert plan == gen.plan_clip(7, i, engines)  # deterministic
        splits.add(plan.split)
        assert (plan.voice in held[plan.engine]) == (plan.split == "test"), plan
        assert "mb-" not in plan.voice
    assert splits == {"train", "val", "test"}


# --- texts and alignment -----------------------------------------------------------------------
def test_texts_are_deterministic_and_in_the_dictionary():
    a, b = SentenceGenerator(5), SentenceGenerator(5)
    texts = [" ".join(a.text()) for _ in range(150)]
    assert texts == [" ".join(b.text()) for _ in range(150)]
    assert any("?" in t for t in texts) and any("!" in t for t in texts)
    assert any(c.isdigit() for t in texts for c in t)
    words = {w for t in texts for w in words_for_alignment(t)}
    decoder = Aligner()._decoder
    assert [w for w in sorted(words) if decoder.lookup_word(w) is None] == []
    assert number_words(342) == "three hundred forty two"
    assert words_for_alignment("It's 21, ok-ish.") == ["it's", "twenty", "one", "ok", "ish"]


@needs_espeak
def test_out_of_vocabulary_words_and_failed_alignment():
    aligner = Aligner()
    assert aligner.ensure_words(["zorbleflix"]) == []  # pronounced by espeak-ng → ARPAbet
    assert aligner._decoder.lookup_word("zorbleflix")
    with pytest.raises(AlignmentError):
        aligner.align(np.zeros(16000, np.float32), "hello world this is a test")


# --- augmentation ------------------------------------------------------------------------------
EFFECTS = {
    "white": lambda x, r: aug.noise(x, r, 10, "white"),
    "pink": lambda x, r: aug.noise(x, r, 10, "pink"),
    "babble": lambda x, r: aug.noise(x, r, 5, "babble", [x[::-1] * 0.5, np.roll(x, 999)]),
    "gain": lambda x, r: aug.gain(x, 12.0),
    "reverb": lambda x, r: aug.reverb(x, r, 0.5, 0.4),
    "telephone": lambda x, r: aug.band_limit(x, 300, 3400),
    "resample8k": lambda x, r: aug.resample_roundtrip(x, 8000),
    "resample44k": lambda x, r: aug.resample_roundtrip(x, 44100, "LQ"),
    "opus": lambda x, r: aug.opus_roundtrip(x, 16000),
    "echo": lambda x, r: aug.echo_cancel(x, r, -20.0),
    "agc": lambda x, r: aug.agc(x, -14.0),
}


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_augmentation_keeps_length_and_range(name, speech):
    y = EFFECTS[name](speech, np.random.default_rng(0))
    assert y.shape == speech.shape and y.dtype == np.float32
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert not np.allclose(y, speech, atol=1e-3)


def test_opus_really_goes_through_the_codec(speech):
    wide = aug.opus_roundtrip(speech, 32000)
    lag = np.argmax(np.correlate(wide, speech[400:-400], "valid")) - 400
    assert lag == 0  # no time shift
    err = 10 * np.log10(np.sum(speech**2) / np.sum((speech - wide) ** 2))
    assert 3 < err < 60  # close to the input, but lossy
    noise = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    narrow = aug.opus_roundtrip(noise, 6000)  # 6 kb/s Opus is narrowband: nothing above 4 kHz
    spec = np.abs(np.fft.rfft(narrow)) ** 2
    assert spec[5000:].sum() < 0.05 * spec.sum()


def test_augment_chain(speech):
    params = aug.AugmentParams(p_reverb=1, p_noise=1, p_band=1, p_echo=1, p_agc=1, p_opus=1)
    for seed in range(3):
        y = aug.augment(speech, np.random.default_rng(seed), params, others=[speech[::-1]])
        assert y.shape == speech.shape and np.isfinite(y).all() and np.abs(y).max() <= 1
    params = aug.AugmentParams(**{f: 1.0 for f in vars(params) if f.startswith("p_")})
    for n in (1, 100, 1000):  # short training windows and silence
        for x in (speech[:n], np.zeros(n, np.float32)):
            y = aug.augment(x, np.random.default_rng(n), params)
            assert y.shape == (n,) and np.isfinite(y).all() and np.abs(y).max() <= 1


# --- reference poses ---------------------------------------------------------------------------
def test_reference_poses_and_variants():
    shipped = reference_poses()
    assert set(shipped) == {"astronaut", "presenter", "closeup", "wide"}
    for pose in shipped.values():
        validate_reference(pose)
    rng = np.random.default_rng(0)
    widths, hands, gaps = [], [], []
    for _ in range(60):
        _, pose = random_reference(rng)
        validate_reference(pose)
        widths.append(rig.face_width(pose))
        hands.append((pose[layout.HANDS, 2] >= 0.3).sum() >= 5)
        gaps.append(rig.inner_gap(pose) / rig.mouth_width(pose))
    assert max(widths) / min(widths) > 2.5
    assert any(hands) and not all(hands)
    assert min(gaps) < 0.03 and max(gaps) > 0.15  # closed and open mouths
    with pytest.raises(ValueError):
        validate_reference(np.zeros((134, 3)))


# --- real video --------------------------------------------------------------------------------
def _write_video(path, frames: int = 8, fps: int = 30) -> None:
    image = load_image(BUNDLED_AVATAR)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 512, 512, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(frames):
            shifted = np.roll(image, 2 * i, axis=1)
            for packet in video.encode(av.VideoFrame.from_ndarray(shifted, format="rgb24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        t = np.arange(int(16000 * frames / fps)) / 16000
        tone = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in list(audio.encode(frame)) + list(audio.encode(None)):
            out.mux(packet)


def test_prepare_video(tmp_path):
    pytest.importorskip("mediapipe")
    from mmgt.train.corpus.video import prepare_video

    video = tmp_path / "talk.mkv"
    _write_video(video)
    record = prepare_video(video, tmp_path / "real", "talk", "val")
    (clip,) = fmt.read_corpus(tmp_path / "real")
    assert clip.id == "talk" and clip.split == "val" and clip.synthetic is False
    audio, keypoints, reference = clip.load()
    assert keypoints.shape == (math.ceil(len(audio) / 640), 134, 3) == (record["frames"], 134, 3)
    assert np.isfinite(keypoints).all()
    np.testing.assert_array_equal(reference, keypoints[0])
    validate_reference(reference)
    assert len(clip.motion_data()["phones"]) == 0 and clip.curves() is None
    # the photo drifts right by 2 px per source frame (30 fps) → the nose follows at 25 fps
    nose = keypoints[:, layout.NOSE, 0]
    assert nose[-1] - nose[0] > 4
    assert prepare_video(video, tmp_path / "real", "talk")["id"] == "talk"  # already there


# --- command line ------------------------------------------------------------------------------
def test_cli(corpus, capsys):
    import argparse

    root, _ = corpus
    parser = argparse.ArgumentParser(prog="mmgt")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "corpus", "--out", str(root), "--clips", "3", "--seed", str(SEED), "-q"]
        + ["--engines", "espeak-ng"]
    )
    assert run_cli(args) == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == 3
    args = parser.parse_args(["data", "extract", "--video", "v.mp4", "--out", "x"])
    assert (args.data_command, args.split) == ("extract", "train")
