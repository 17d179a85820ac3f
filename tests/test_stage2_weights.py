"""Loading official-format stage-2 weights: folders, process-1 fallback, strictness, conversion."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgt.cli import main
from mmgt.errors import WeightsError
from mmgt.models.stage2 import PRESETS
from mmgt.weights.stage2 import load_stage2_net, read_stage2_state, save_stage2_safetensors

FIX = Path(__file__).parent / "fixtures" / "official" / "stage2_tiny_net.safetensors"


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return load_file(str(FIX))


def _net_pth(folder: Path, state: dict, name: str = "stage_2/net-32500.pth") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_net_pth_in_a_folder_loads_strictly_with_inferred_sizes(tmp_path, state):
    _net_pth(tmp_path, state)
    net = load_stage2_net(tmp_path)
    assert net.config.unet.block_out_channels == (32, 32, 64, 64)
    assert net.config.audio_proj.context_tokens == 4
    key = "denoising_unet.down_blocks.2.audio_modules.0.proj_in.weight"
    torch.testing.assert_close(net.state_dict()[key], state[key].float())


def test_process1_files_fill_a_missing_prefix(tmp_path, state):
    without = {k: v for k, v in state.items() if not k.startswith("pose_guider.")}
    _net_pth(tmp_path, without)
    guider = {
        k.removeprefix("pose_guider."): v for k, v in state.items() if k.startswith("pose_guider.")
    }
    _net_pth(tmp_path, guider, "stage_2/process_1/pose_guider-29580.pth")
    loaded = read_stage2_state(tmp_path)
    assert loaded.sources["pose_guider"].endswith("pose_guider-29580.pth")
    assert loaded.sources["audioproj"].endswith("net-32500.pth")
    load_stage2_net(tmp_path, PRESETS["fixture"])


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, state):
    broken = dict(state)
    del broken["audioproj.norm.weight"]
    broken["denoising_unet.mid_block.audio_modules.0.norm.weight"] = torch.zeros(64)
    broken["pose_guider.conv_out.weight"] = torch.zeros(8, 256, 3, 3)
    _net_pth(tmp_path, broken)
    with pytest.raises(WeightsError) as err:
        load_stage2_net(tmp_path, PRESETS["fixture"])
    text = str(err.value)
    assert "missing: audioproj.norm.weight" in text
    assert "unexpected: denoising_unet.mid_block.audio_modules.0.norm.weight" in text
    assert "pose_guider.conv_out.weight: checkpoint (8, 256, 3, 3) vs model (32, 256, 3, 3)" in text


def test_a_pickle_that_carries_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "stage_2" / "net-1.pth"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        pickle.dump({"reference_unet.x": Payload()}, f)
    with pytest.raises(WeightsError, match="only weights-only checkpoints"):
        load_stage2_net(tmp_path)


def test_safetensors_round_trip(tmp_path):
    net = load_stage2_net(FIX, PRESETS["fixture"])
    out = tmp_path / "net.safetensors"
    save_stage2_safetensors(net, out)
    again = load_stage2_net(out).state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(v, again[k]), k


def test_check_weights_cli(tmp_path, state, capsys):
    _net_pth(tmp_path, state)
    assert main(["check-weights", str(tmp_path), "--convert"]) == 0
    out = capsys.readouterr().out
    assert "[      ok] stage 2 networks" in out and "[  absent] VAE" in out
    converted = tmp_path / "stage_2" / "net.safetensors"
    assert converted.is_file() and set(load_file(str(converted))) == set(state)
    broken = dict(state)
    del broken["audioproj.norm.bias"]
    converted.unlink()
    _net_pth(tmp_path, broken)
    assert main(["check-weights", str(tmp_path)]) == 1
    assert "missing: audioproj.norm.bias" in capsys.readouterr().out
    assert main(["check-weights", str(tmp_path / "nope")]) == 2
