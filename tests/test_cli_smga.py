"""``mmgt render --driver smga`` with official-format weights: a random official checkpoint and
a tiny WavLM in transformers format (the real weights cannot be fetched here)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from mmgt.cli import main
from mmgt.models.smga import SMGA, preset
from mmgt.weights.wavlm import load_wavlm
from tests.standin_models import write_models

FIX = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="module")
def official_weights(tmp_path_factory) -> Path:
    """stage_1/audio2pose_best_model.pt (official dict layout) + wavlm/ (transformers folder)."""
    root = tmp_path_factory.mktemp("weights")
    cfg = json.loads((FIX / "wavlm_tiny_config.json").read_text())["cfg"]
    wavlm = load_wavlm(FIX / "wavlm_tiny.safetensors", cfg=cfg)
    wavlm.save_pretrained(root / "wavlm")
    torch.manual_seed(0)
    # Fixture-width SMGA whose audio input is tiny-WavLM (32) ‖ EDGE (35) = 67 features.
    model = SMGA(preset("fixture", audio_dim=32 + 35))
    state = model.state_dict()
    (root / "stage_1").mkdir()
    torch.save({"ema_state_dict": state, "model_state_dict": state, "normalizer": None},
               root / "stage_1" / "audio2pose_best_model.pt")  # fmt: skip
    write_models(root)  # DWPose/ stand-ins: the reference pose comes from them
    return root


def test_render_with_official_format_weights(tmp_path, official_weights, capsys):
    out = tmp_path / "smga.mp4"
    data, rate = sf.read(FIX.parent.parent.parent / "mmgt" / "assets" / "speech_sample.wav")
    speech = tmp_path / "speech.wav"
    sf.write(speech, data[: int(6.5 * rate)], rate)  # 163 frames: two 80-frame windows and more
    args = ["render", "--audio", str(speech), "--out", str(out), "--size", "128", "-q",
            "--driver", "smga", "--weights-dir", str(official_weights), "--smga-heads", "4",
            "--steps", "2"]  # fmt: skip
    assert main(args) == 0
    assert "reference pose: DWPose" in capsys.readouterr().err
    with av.open(str(out)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 163


def test_missing_wavlm_and_bad_checkpoints_fail_cleanly(tmp_path, official_weights, capsys):
    speech = FIX.parent.parent.parent / "mmgt" / "assets" / "speech_sample.wav"
    ckpt = official_weights / "stage_1" / "audio2pose_best_model.pt"
    base = ["render", "--audio", str(speech), "--out", str(tmp_path / "x.mp4"), "-q",
            "--size", "128", "--driver", "smga", "--smga-heads", "4"]  # fmt: skip
    assert main([*base, "--smga-weights", str(ckpt)]) == 2
    assert "--wavlm" in capsys.readouterr().err

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    torch.save(
        {"ema_state_dict": load_file(FIX / "smga_tiny_state.safetensors"), "x": Payload()}, evil
    )
    assert main([*base, "--smga-weights", str(evil)]) == 2
    err = capsys.readouterr()
    assert "refusing to load" in err.err and "code ran" not in err.out
    # A file that is no checkpoint at all (a download cut short, an error page saved under the
    # weights' name) is called damaged, not unsafe: the fix is to download it again.
    data = ckpt.read_bytes()
    damaged = {
        "cut.pt": data[: len(data) // 2],
        "page.pt": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "noise.pth": bytes(range(256)) * 20,
        "cut.safetensors": (FIX / "smga_tiny_state.safetensors").read_bytes()[:1000],
    }
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        assert main([*base, "--smga-weights", str(tmp_path / name)]) == 2
        said = capsys.readouterr().err
        assert "damaged or incomplete" in said and "refusing" not in said, said
        (tmp_path / name).unlink()
    # SMGA options without --driver smga are an error, not silently ignored.
    plain = ["render", "--audio", str(speech), "--out", str(tmp_path / "x.mp4"), "-q"]
    assert main([*plain, "--steps", "3"]) == 2
    assert "--driver smga" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_a_converted_checkpoint_is_preferred(tmp_path):
    from mmgt.cli import _find_smga

    (tmp_path / "audio2pose_best_model.pt").touch()
    assert _find_smga(tmp_path).name == "audio2pose_best_model.pt"
    (tmp_path / "audio2pose_best_model.safetensors").touch()
    assert _find_smga(tmp_path).name == "audio2pose_best_model.safetensors"


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--driver", "smga", "--steps", "0"], "SMGA steps must be an integer in 1..1000, got 0"),
        (["--driver", "smga", "--guidance", "nan"], "SMGA guidance must be a finite number"),
        (["--driver", "smga", "--eta", "1.5"], "SMGA DDIM eta must be in [0, 1]"),
        (["--driver", "smga", "--context", "40"], "SMGA context must be in 0..31 frames"),
        (["--driver", "smga", "--smga-heads", "0"], "heads must be a positive integer"),
        (["--renderer", "diffusion", "--stage2-preset", "tiny", "--render-guidance", "-1"],
         "diffusion guidance must be a finite number ≥ 0"),
    ],
)  # fmt: skip
def test_sampler_settings_out_of_range_are_refused(tmp_path, capsys, flags, said):
    """Settings that would fail deep inside sampling (η > 1 makes DDIM's noise term NaN) or
    silently do something else (a NaN guidance weight turns guidance off) are refused."""
    assert main(["render", "--out", str(tmp_path / "x.mp4"), "-q", "--size", "128", *flags]) == 2
    assert said in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
