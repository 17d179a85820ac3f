"""Stage-2 training (both official processes) on random tiny networks and generated clips, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.audio import wav2vec as w2v
from mmgt.cli import main
from mmgt.errors import InputError, WeightsError
from mmgt.models.stage2 import PRESETS, Stage2Net
from mmgt.train import cli as train_cli
from mmgt.train.stage2_data import (
    TRAIN_MASK_MODES,
    Stage2Clips,
    find_clips,
    generate_clips,
    read_clip,
)
from mmgt.train.stage2_parts import (
    Recipe,
    Stage2Objective,
    enable_checkpointing,
    load_init,
    load_motion_modules,
    set_trainable,
    trainable,
)
from mmgt.train.stage2_train import Stage2TrainConfig, open_clips, train_stage2
from mmgt.weights.stage2 import load_stage2_net
from mmgt.weights.stage2_models import Stage2Models
from tests.helpers import write_tiny_official_folder

FAST = dict(lr=2e-3, eval_samples=2, log_every=1000)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Three generated 16-frame clips at the tiny model's 128²."""
    folder = tmp_path_factory.mktemp("clips")
    generate_clips(folder, 3, size=128, frames=16, seed=0)
    return folder


def _train(clips: Path, out: Path, process: int, init: Path | None = None, resume=False, **kw):
    models = Stage2Models.random("tiny", seed=0)
    if init is not None:
        load_init(models.net, init)
    start = {k: v.clone() for k, v in models.net.state_dict().items()}
    cfg = Stage2TrainConfig.official(process, **{**FAST, **kw})
    train, val = open_clips(clips, models, cfg)
    summary = train_stage2(models, train, val, out, cfg, resume=resume)
    return models, start, summary


@pytest.fixture(scope="module")
def process1(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("p1")
    models, start, summary = _train(clips, out, 1, steps=16, batch=2, eval_every=8)
    return out, models, start, summary


@pytest.fixture(scope="module")
def process2(clips, tmp_path_factory):
    """12 steps on one 8-frame window, validated on that window with fixed noise and t (the
    random tiny VAE maps frames to nearly constant latents, so what is learnt is mostly the
    denoising itself, not the clip)."""
    window = tmp_path_factory.mktemp("window")
    frames, points, audio = read_clip(clips / "gen0-0000.npz")
    np.savez(window / "w.npz", frames=frames[:8], keypoints=points[:8], audio=audio[: 8 * 640])
    out = tmp_path_factory.mktemp("p2")
    kw = dict(steps=12, frames=8, eval_every=6, lr=5e-3, eval_samples=4, reference="first")
    models, start, summary = _train(window, out, 2, **kw)
    return out, models, start, summary


def _changed(before: dict, net: torch.nn.Module) -> set[str]:
    return {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}


def test_process1_loss_falls_and_only_spatial_parts_change(process1):
    out, models, start, summary = process1
    history = summary["history"]
    assert [h["step"] for h in history] == [0, 8, 16]
    # fixed held-out samples, noise and timesteps: the validation loss must really fall
    assert summary["best_val_loss"] < 0.8 * summary["val_before"], history
    changed = _changed(start, models.net)
    assert not [k for k in changed if k.startswith("reference_unet.up_blocks.3.")]
    assert not [k for k in changed if "motion_modules" in k or "audio_modules" in k]
    assert not [k for k in changed if k.startswith("audioproj.")]
    for prefix in ("reference_unet.down_blocks", "denoising_unet.", "pose_guider."):
        assert any(k.startswith(prefix) for k in changed), prefix
    assert json.loads((out / "history.json").read_text()) == history


def test_process1_files_load_strictly_and_equal_the_trained_weights(process1):
    out, models, _, summary = process1
    net = models.net
    for part in ("reference_unet", "denoising_unet", "pose_guider"):
        state = torch.load(out / f"{part}-16.pth", weights_only=True)
        module = getattr(Stage2Net(PRESETS["tiny"]), part)
        if part == "denoising_unet":  # the official process-1 UNet has no motion/audio modules
            missing, unexpected = module.load_state_dict(state, strict=False)
            assert not unexpected and missing
            assert all("motion_modules" in k or "audio_modules" in k for k in missing)
        else:
            module.load_state_dict(state, strict=True)
        trained = getattr(net, part).state_dict()
        assert all(torch.equal(v, trained[k]) for k, v in state.items())
    assert sorted(p.name for p in (out / "best").iterdir()) == sorted(
        f"{p}-{summary['best_step']}.pth"
        for p in ("denoising_unet", "pose_guider", "reference_unet")
    )


def test_process2_loss_falls_and_only_video_modules_change(process2):
    out, models, start, summary = process2
    assert summary["best_val_loss"] < 0.8 * summary["val_before"], summary["history"]
    changed = _changed(start, models.net)  # everything else bit-identical
    assert changed and all(trainable(k, 2) for k in changed)
    assert any(k.startswith("audioproj.") for k in changed)
    assert any("audio_modules" in k for k in changed)
    assert any("motion_modules" in k for k in changed)


def test_process2_net_file_loads_with_the_project_loader(process2):
    out, models, _, summary = process2
    trained = models.net.state_dict()
    for source in (out / "net-12.pth", out / "best"):
        net = load_stage2_net(source)
        loaded = net.state_dict()
        assert loaded.keys() == trained.keys()
        if source == out / "net-12.pth":
            assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    assert (out / "best" / f"net-{summary['best_step']}.pth").is_file()
    assert not list(out.glob("*.tmp"))


def test_resume_continues_exactly(clips, tmp_path):
    kw = dict(batch=1, eval_every=2, eval_samples=1, keep_last=1)
    straight, _, whole = _train(clips, tmp_path / "a", 1, steps=4, **kw)
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pth")) == [
        "denoising_unet-4.pth", "pose_guider-4.pth", "reference_unet-4.pth"]  # fmt: skip
    _train(clips, tmp_path / "b", 1, steps=2, **kw)
    resumed, _, second = _train(clips, tmp_path / "b", 1, steps=4, resume=True, **kw)
    assert second["steps"] == 4 and [h["step"] for h in second["history"]] == [0, 2, 4]
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second["best_val_loss"] == whole["best_val_loss"]
    with pytest.raises(InputError, match="process-1 run"):
        _train(clips, tmp_path / "b", 2, steps=5, frames=4, resume=True, **kw)


def test_time_budget_stops_with_a_resumable_checkpoint(clips, tmp_path, monkeypatch):
    from mmgt.train import stage2_train

    class Clock:  # every reading is 31 s later: the 1-minute budget ends after one step
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 31.0
            return self.now

    monkeypatch.setattr(stage2_train, "time", Clock())
    kw = dict(batch=1, eval_every=100, eval_samples=1)
    _, _, summary = _train(clips, tmp_path, 1, steps=5, max_minutes=1.0, **kw)
    assert summary["steps"] == 1 and [h["step"] for h in summary["history"]] == [0, 1]
    assert (tmp_path / "pose_guider-1.pth").is_file() and (tmp_path / "last.pt").is_file()
    monkeypatch.undo()
    _, _, summary = _train(clips, tmp_path, 1, steps=2, resume=True, **kw)
    assert [h["step"] for h in summary["history"]] == [0, 1, 2]


def test_bad_clip_folders_are_input_errors(clips, tmp_path):
    models = Stage2Models.random("tiny")
    cfg = Stage2TrainConfig.official(2)
    with pytest.raises(InputError, match="no clips"):
        find_clips(tmp_path)
    with pytest.raises(InputError, match="not found"):
        find_clips(tmp_path / "missing")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="not a stage-2 clip"):
        open_clips(tmp_path, models, cfg)
    (tmp_path / "garbage.npz").write_bytes((clips / "gen0-0000.npz").read_bytes()[:5000])
    with pytest.raises(InputError, match="not a stage-2 clip"):
        open_clips(tmp_path, models, cfg)
    (tmp_path / "garbage.npz").unlink()
    frames, points, audio = read_clip(clips / "gen0-0000.npz")
    np.savez(tmp_path / "short.npz", frames=frames[:5], keypoints=points[:5], audio=audio)
    with pytest.raises(InputError, match="12 frames of a training window"):
        open_clips(tmp_path, models, cfg)
    np.savez(tmp_path / "short.npz", frames=frames, keypoints=points[:3], audio=audio)
    with pytest.raises(InputError, match="keypoints must be"):
        read_clip(tmp_path / "short.npz")
    with pytest.raises(InputError, match="mask mode"):
        Stage2Clips(find_clips(clips), models, frames=4, audio=True, mask_mode="hands")


def test_batches_match_the_inference_conditions(clips):
    models = Stage2Models.random("tiny")
    paths = find_clips(clips)
    data = Stage2Clips(paths, models, frames=6, audio=True, reference="first")
    g = torch.Generator().manual_seed(3)
    b = data.batch(g, 2)
    assert b.frames.shape == (2, 6, 3, 128, 128) and b.pose.shape == (2, 3, 6, 128, 128)
    assert b.windows.shape == (2, 6, 5, 12, 32)
    assert [m.shape for m in b.masks.full] == [(12, 256), (12, 64), (12, 16)]
    # "first": the reference is the window's first frame
    assert torch.equal(b.reference, b.frames[:, 0])
    # windows = ±2 frames of the whole-clip wav2vec2 states, as the official data loader
    g = torch.Generator().manual_seed(3)
    weights = torch.full((3,), 11.0, dtype=torch.float64)
    pick = int(torch.multinomial(weights, 2, replacement=True, generator=g)[0])
    start = int(torch.randint(0, 16 - 6 - 2, (), generator=g))  # 2 frames of audio after it
    _, _, audio = read_clip(paths[pick])
    full = w2v.frame_windows(w2v.hidden_states(models.wav2vec, audio))
    np.testing.assert_allclose(b.windows[0].numpy(), full[start : start + 6], atol=1e-6)
    hands = Stage2Clips(paths, models, frames=6, audio=True, mask_mode="official-train")
    official = hands.conditions(0).masks
    assert not torch.equal(official.full[0], data.conditions(0).masks.full[0])
    assert torch.equal(official.face[0], data.conditions(0).masks.face[0])
    assert set(TRAIN_MASK_MODES) == set(train_cli.MASK_MODES)
    # another training size (the official process 1 ran at 256²): the objective runs on it
    small = Stage2Clips(paths, models, frames=1, audio=False, resolution=64)
    b = small.batch(torch.Generator().manual_seed(0), 2)
    assert b.frames.shape == (2, 1, 3, 64, 64) and b.pose.shape == (2, 3, 1, 64, 64)
    objective = Stage2Objective(models, 1, Recipe())
    enc = objective.encode(b)
    assert enc.latents.shape == (2, 4, 1, 8, 8)
    loss = objective.loss(models.net, enc, objective.draw(enc, torch.Generator(), drop=False))
    assert loss.shape == (2,) and torch.isfinite(loss).all()


def test_gradient_checkpointing_gives_the_same_gradients(clips):
    grads, calls = [], []
    for checkpointing in (False, True):
        models = Stage2Models.random("tiny", seed=1)
        params = set_trainable(models.net, 2)
        if checkpointing:
            enable_checkpointing(models.net)
        count = []
        module = models.net.denoising_unet.up_blocks[1].motion_modules[0]
        module.register_forward_hook(lambda *_, count=count: count.append(1))
        objective = Stage2Objective(models, 2, Recipe())
        data = Stage2Clips(find_clips(clips), models, frames=4, audio=True)
        g = torch.Generator().manual_seed(0)
        enc = objective.encode(data.batch(g, 1), g)
        objective.loss(models.net, enc, objective.draw(enc, g)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))
        calls.append(len(count))
    assert calls == [1, 2]  # recomputed in the backward pass
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_motion_modules_from_an_animatediff_file(tmp_path):
    source, target = Stage2Net(PRESETS["tiny"]), Stage2Net(PRESETS["tiny"])
    with torch.no_grad():
        for name, p in source.denoising_unet.named_parameters():
            p.add_(1.0 if "motion_modules" in name else 0.0)
    mm = {k: v for k, v in source.denoising_unet.state_dict().items() if "motion_modules" in k}
    torch.save({"state_dict": mm}, tmp_path / "mm.ckpt")
    other = target.denoising_unet.conv_in.weight.clone()
    load_motion_modules(target, tmp_path / "mm.ckpt")
    loaded = target.denoising_unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mm.items())
    assert torch.equal(target.denoising_unet.conv_in.weight, other)
    mm.pop(next(iter(mm)))
    torch.save(mm, tmp_path / "broken.ckpt")
    with pytest.raises(WeightsError, match="missing"):
        load_motion_modules(target, tmp_path / "broken.ckpt")
    with pytest.raises(WeightsError, match="no stage-2 weights"):
        load_init(target, tmp_path)


def test_cli_trains_and_reports_bad_input(tmp_path, capsys):
    clips, out = tmp_path / "clips", tmp_path / "out"
    args = ["train", "--stage", "2", "--clips", str(clips), "--stage2-preset", "tiny",
            "--steps", "1", "--batch", "1", "--eval-every", "1", "--eval-samples", "1"]  # fmt: skip
    assert main([*args, "--process", "1", "--generate", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "best"))
    assert {p.name for p in out.iterdir()} >= {"reference_unet-1.pth", "last.pt", "best"}
    assert main([*args, "--process", "2", "--frames", "4", "--init", str(out),
                 "--out", str(tmp_path / "p2")]) == 0  # fmt: skip
    net = load_stage2_net(tmp_path / "p2" / "net-1.pth").state_dict()
    for part in ("reference_unet", "denoising_unet", "pose_guider"):  # frozen at process 1's
        p1 = torch.load(out / f"{part}-1.pth", weights_only=True)
        assert all(torch.equal(v, net[f"{part}.{k}"]) for k, v in p1.items())
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = [
        ([*args[:4], str(empty), *args[5:], "--process", "1", "--out", str(out)], "no clips"),
        ([*args, "--out", str(out)], "--process 1|2"),
        ([*args, "--process", "1", "--out", str(out), "--weights-dir", str(empty)], "exactly one"),
        (["train", "--out", str(out)], "needs --corpus"),
        ([*args, "--process", "1", "--out", str(out), "--device", "bogus"], "--device"),
        (["train", "--out", str(out), "--clips", str(clips)], "--clips need --stage 2"),
    ]
    for argv, message in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mmgt train: error: ") and message in err, err


def test_video_to_clips(tmp_path):
    pytest.importorskip("mediapipe")
    import av

    from mmgt.avatar import BUNDLED_AVATAR, load_image
    from mmgt.train.stage2_data import video_to_clips

    image = load_image(BUNDLED_AVATAR)
    video = tmp_path / "talk.mkv"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.roll(image, 2 * i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        tone = (0.2 * np.sin(np.arange(6400) / 16000 * 2 * np.pi * 220) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in list(audio.encode(frame)) + list(audio.encode(None)):
            out.mux(packet)
    paths = video_to_clips(video, tmp_path / "clips", size=128, clip_frames=6)
    assert [p.name for p in paths] == ["talk-000.npz", "talk-001.npz"]
    frames, points, audio = read_clip(paths[0])
    assert frames.shape == (6, 128, 128, 3) and points.shape == (6, 134, 3)
    assert audio.size == 6 * 640 and len(read_clip(paths[1])[0]) == 4
    nose = points[:, 0]  # inside the 128 frame, and following the photo to the right
    assert (nose[:, 2] > 0.3).all() and (0 < nose[:, :2]).all() and (nose[:, :2] < 128).all()
    # With the official vocal separation (here a transparent stand-in), the clips keep its
    # output: the tone × the model's compensation, same length.
    from mmgt.audio.separation import COMPENSATE, VocalSeparator
    from tests.standin_models import identity_separator

    model = tmp_path / "Kim_Vocal_2.onnx"
    model.write_bytes(identity_separator().SerializeToString())
    separated = video_to_clips(video, tmp_path / "vocals", size=128, clip_frames=6,
                               separator=VocalSeparator(model))  # fmt: skip
    vocals = read_clip(separated[0])[2]
    assert vocals.size == audio.size
    middle = slice(640, 3200)  # away from the ends, where the resamplers' edges differ
    gain = float(vocals[middle] @ audio[middle] / (audio[middle] @ audio[middle]))
    assert gain == pytest.approx(COMPENSATE, abs=0.02)
    with pytest.raises(InputError, match="not found"):
        video_to_clips(tmp_path / "none.mp4", tmp_path / "clips")


def test_cli_from_an_official_weights_folder(clips, tmp_path):
    """``--weights-dir``: the official folder layout (docs/weights.md), written from tiny models."""
    root = tmp_path / "weights"
    models = write_tiny_official_folder(root)
    out = tmp_path / "out"
    argv = ["train", "--stage", "2", "--process", "2", "--weights-dir", str(root),
            "--clips", str(clips), "--frames", "4", "--steps", "1", "--batch", "1", "--lr",
            "1e-3", "--eval-every", "1", "--eval-samples", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    before, after = models.net.state_dict(), load_stage2_net(out / "net-1.pth").state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all(trainable(k, 2) for k in changed)


def test_stage1_command_keeps_its_defaults(tmp_path, monkeypatch, capsys):
    from mmgt.train import smga_train

    seen = {}
    monkeypatch.setattr(train_cli, "_load_split", lambda root, split: [])
    monkeypatch.setattr(smga_train, "WindowSampler", lambda *a, **k: None)
    monkeypatch.setattr(smga_train, "train_smga", lambda *a, **k: seen.update(tc=a[4]) or {})
    assert main(["train", "--corpus", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    tc = seen["tc"]
    assert (tc.steps, tc.batch, tc.lr, tc.eval_every) == (20000, 64, 2e-4, 500)
    assert capsys.readouterr().out.strip().endswith("best.safetensors")


def test_training_from_the_pretrained_base_models(clips, tmp_path, capsys):
    """``--from-base``: process 1 starts both UNets from an SD image-variations UNet folder and
    the pose guider from a ControlNet-openpose file (not its conv_out); process 2 starts from
    the process-1 files at the SD1.5 layout."""
    from diffusers import UNet2DConditionModel

    from mmgt.train.stage2_base import CONTROLNET_DIR, PROCESS1_UNET, base_models
    from mmgt.weights.stage2_models import randomize

    root = tmp_path / "weights"
    models = write_tiny_official_folder(root)
    base = UNet2DConditionModel(**models.config.unet.reference_config())
    randomize(base, seed=11)
    base.save_pretrained(root / PROCESS1_UNET)
    guider = {f"controlnet_cond_embedding.{k}": torch.randn_like(v)
              for k, v in models.net.pose_guider.state_dict().items()}  # fmt: skip
    guider["controlnet_down_blocks.0.weight"] = torch.zeros(1)  # the rest of a ControlNet
    (root / CONTROLNET_DIR).mkdir()
    torch.save(guider, root / CONTROLNET_DIR / "diffusion_pytorch_model.bin")

    loaded, notes = base_models(root, 1)
    net, want = loaded.net, base.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in net.reference_unet.state_dict().items())
    unet = net.denoising_unet.state_dict()
    assert all(torch.equal(unet[k], v) for k, v in want.items())  # every base tensor, head too
    for k, v in net.pose_guider.state_dict().items():
        expected = guider[f"controlnet_cond_embedding.{k}"]
        assert torch.equal(v, expected) != k.startswith("conv_out."), k
    assert any("pose guider from" in n for n in notes)

    out1, out2 = tmp_path / "p1", tmp_path / "p2"
    argv = ["train", "--stage", "2", "--weights-dir", str(root), "--from-base", "--clips",
            str(clips), "--steps", "1", "--batch", "1", "--eval-every", "1", "--eval-samples",
            "1"]  # fmt: skip
    assert main([*argv, "--process", "1", "--out", str(out1)]) == 0
    assert "base models: both UNets from" in capsys.readouterr().err
    assert main([*argv, "--process", "2", "--frames", "4", "--init", str(out1),
                 "--out", str(out2)]) == 0  # fmt: skip
    trained = load_stage2_net(out2 / "net-1.pth").state_dict()
    p1 = torch.load(out1 / "reference_unet-1.pth", weights_only=True)
    assert all(torch.equal(v, trained[f"reference_unet.{k}"]) for k, v in p1.items())
    assert main([*argv, "--process", "2", "--out", str(out2)]) == 2  # process 2 needs --init
    assert "--from-base needs" in capsys.readouterr().err
