"""Compute accounting for the MMGT stage-2 networks: FLOPs, weight bytes, GPU projections.

Run: ``python -m bench.stage2_compute [--size 512] [--window 12] [--overlap 4]
[--utilisation 0.4] [--skip-cpu] [--json PATH]``. Prints a Markdown report.

* **Counted** (no GPU needed): every network is built from its config on the ``meta`` device
  (no weights are allocated) in fp16 and run once under ``FlopCounterMode`` (a multiply-add = 2
  FLOPs; matmuls, convolutions and attention only — norms, softmax and elementwise ops are not
  counted). Weight bytes = parameters × 2 (fp16). Activation traffic is an *unfused* estimate:
  every non-view aten op reads its (non-weight) inputs and writes its outputs to DRAM once,
  except that attention is treated as one fused (FlashAttention-style) op reading q, k, v and
  writing its output. Real fused kernels move less, so this is an upper bound.
* **Derived**: per output frame for live streaming and the official offline scheme (windows of
  ``window`` latent frames, ``window − overlap`` new frames each), at 2, 4 and 30 steps, with and
  without CFG (CFG = one UNet call with batch 2).
* **Projected** (not measured): ms per frame on an H100 SXM and an RTX 4090 from a per-call
  roofline, max(FLOPs / (peak × utilisation), weight bytes / bandwidth).
* **Measured**: CPU wall time of the ``tiny`` preset (16² latents, 2 threads).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from bench._common import median_time
from mmgt.models.mmhaa import BranchMasks
from mmgt.models.reference import ReferenceRead, reference_bank
from mmgt.models.stage2 import PRESETS, Stage2Config, Stage2Net

FPS = 25
SAMPLE_RATE = 16000
LATENT_SCALE = 0.18215
CLIP_SIZE = 224
STEPS = (2, 4, 30)
FP16_BYTES = 2


@dataclass(frozen=True)
class GPU:
    """Peak dense fp16 tensor throughput (fp32 accumulate) and DRAM bandwidth."""

    name: str
    tflops: float
    tb_per_s: float
    note: str


GPUS = (
    GPU("H100 SXM", 989.0, 3.35, "989 TFLOPS dense fp16/bf16 tensor, HBM3 3.35 TB/s"),
    GPU(
        "RTX 4090",
        165.0,
        1.01,
        "165 TFLOPS dense fp16 tensor with fp32 accumulate (PyTorch's default; 330 with fp16 "
        "accumulate), GDDR6X 1.01 TB/s",
    ),
)


@dataclass(frozen=True)
class Cost:
    """One call of one network."""

    flops: float
    params: int
    act_bytes: float  # unfused activation traffic estimate (bytes)

    @property
    def weight_bytes(self) -> float:
        return FP16_BYTES * self.params


# -- counting ---------------------------------------------------------------------------------


def _storage_id(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class _Traffic(TorchDispatchMode):
    """Sums bytes read (non-weight tensor inputs) and written (outputs) by non-view aten ops."""

    FREE = {torch.ops.aten._unsafe_view.default, torch.ops.aten.lift_fresh.default}

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights = weights
        self.bytes = 0
        self.suppress = False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.suppress or func.is_view or func in self.FREE:
            return out
        ins, _ = tree_flatten((args, kwargs or {}))
        outs, _ = tree_flatten(out)
        self.bytes += sum(
            _nbytes(t) for t in ins if isinstance(t, Tensor) and _storage_id(t) not in self.weights
        )
        self.bytes += sum(_nbytes(t) for t in outs if isinstance(t, Tensor))
        return out


class _FusedAttention(TorchFunctionMode):
    """Counts scaled-dot-product attention as one fused op (q, k, v in; output out)."""

    def __init__(self, traffic: _Traffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.traffic.suppress = True
        try:
            out = func(*args, **kwargs)
        finally:
            self.traffic.suppress = False
        qkv = [*args, *(kwargs[k] for k in ("query", "key", "value") if k in kwargs)][:3]
        self.traffic.bytes += sum(_nbytes(t) for t in qkv) + _nbytes(out)
        return out


def measure(fn: Callable[[], Any], modules: Iterable[nn.Module]) -> tuple[Cost, Any]:
    """FLOPs, parameter count (of ``modules``) and activation traffic of one call of ``fn``."""
    params = [p for m in modules for p in m.parameters()]
    traffic = _Traffic({_storage_id(p) for p in params})
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, traffic, _FusedAttention(traffic):
        out = fn()
    n = sum(p.numel() for p in params)
    return Cost(float(counter.get_total_flops()), n, float(traffic.bytes)), out


# -- the networks -----------------------------------------------------------------------------


def build_aux(device: str | torch.device = "meta", dtype: torch.dtype = torch.float16) -> dict:
    """VAE (sd-vae-ft-mse), CLIP ViT-L/14 image encoder, wav2vec2-base, from configs in code."""
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

    with torch.device(device):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=LATENT_SCALE,
        )
        clip = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=CLIP_SIZE,
                patch_size=14,
                projection_dim=768,
                hidden_act="quick_gelu",
            )
        )
        wav2vec = Wav2Vec2Model(Wav2Vec2Config())  # defaults = wav2vec2-base
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # silence the "cast with to()" notice
    try:
        vae = vae.to(dtype).eval()
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return {"vae": vae, "clip": clip.to(dtype).eval(), "wav2vec": wav2vec.to(dtype).eval()}


def wav2vec_features(model: nn.Module, wave: Tensor, frames: int) -> tuple[Tensor, ...]:
    """Official (Hallo-style) use: conv features interpolated to ``frames`` rows *before* the
    transformer; returns all hidden states."""
    feats = model.feature_extractor(wave)  # (B, 512, 50 Hz)
    feats = F.interpolate(feats, size=frames, mode="linear", align_corners=True).transpose(1, 2)
    hidden = model.feature_projection(feats)[0]
    return model.encoder(hidden, output_hidden_states=True).hidden_states


def _masks(
    rows: int, h: int, w: int, levels: int, device: torch.device, dtype: torch.dtype
) -> BranchMasks:
    lv = tuple(
        torch.ones(rows, (h >> k) * (w >> k), device=device, dtype=dtype) for k in range(levels)
    )
    return BranchMasks(lv, lv, lv)


def count_costs(
    preset: str | Stage2Config = "official",
    size: int = 512,
    window: int = 12,
    overlap: int = 4,
    audio_context_s: float = 2.0,
    device: str = "meta",
    dtype: torch.dtype = torch.float16,
) -> dict[str, Cost]:
    """Cost of one call of every stage-2 network (see :data:`CALLS` for what one call is)."""
    config = PRESETS[preset] if isinstance(preset, str) else preset
    if size % 64:
        raise ValueError("size must be a multiple of 64 (a latent side divisible by 8)")
    dev = torch.device(device)
    with dev:
        net = Stage2Net(config)
    net = net.to(dtype).eval()
    aux = build_aux(dev, dtype)
    u, a = config.unet, config.audio_proj
    h = size // 8
    costs: dict[str, Cost] = {}
    rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)  # noqa: E731

    clip_img = rnd(1, 1, u.cross_attention_dim)
    ref_latent = rnd(1, u.in_channels, h, h)
    costs["reference_net"], bank = measure(
        lambda: reference_bank(net.reference_unet, ref_latent, clip_img), [net.reference_unet]
    )
    poses = torch.rand(1, 3, window, size, size, device=dev, dtype=dtype)
    costs["pose_guider"], pose = measure(lambda: net.pose_guider(poses), [net.pose_guider])
    windows = rnd(1, window, a.window, a.layers, a.channels)
    costs["audio_proj"], tokens = measure(lambda: net.audioproj(windows), [net.audioproj])

    levels = len(u.block_out_channels)
    for name, batch in (("unet", 1), ("unet_cfg", 2)):
        latents = rnd(batch, u.in_channels, window, h, h)
        masks = _masks(batch * window, h, h, levels, dev, dtype)
        ctx = clip_img.repeat(batch, 1, 1)
        tok = tokens.repeat(batch, 1, 1, 1)
        feats = pose.repeat(batch, 1, 1, 1)
        read = ReferenceRead(bank, window, uncond_rows=window * (batch - 1))
        costs[name], _ = measure(
            lambda lat=latents, ctx=ctx, tok=tok, m=masks, p=feats, r=read: net.denoising_unet(
                lat, 500, ctx, tok, m, p, r
            ),
            [net.denoising_unet],
        )

    vae = aux["vae"]
    image = rnd(1, 3, size, size)
    costs["vae_encoder"], _ = measure(
        lambda: vae.encode(image).latent_dist.mean, [vae.encoder, vae.quant_conv]
    )
    latent = rnd(1, 4, h, h)
    costs["vae_decoder"], _ = measure(
        lambda: vae.decode(latent).sample, [vae.decoder, vae.post_quant_conv]
    )
    pixels = rnd(1, 3, CLIP_SIZE, CLIP_SIZE)
    clip = aux["clip"]
    costs["clip"], _ = measure(lambda: clip(pixel_values=pixels).image_embeds, [clip])
    w2v = aux["wav2vec"]
    live_s = audio_context_s + (window - overlap) / FPS
    for name, seconds in (("wav2vec2_1s", 1.0), ("wav2vec2_live_window", live_s)):
        wave = rnd(1, round(seconds * SAMPLE_RATE))
        costs[name], _ = measure(
            lambda wave=wave, s=seconds: wav2vec_features(w2v, wave, round(s * FPS)), [w2v]
        )
    return costs


CALLS = {
    "unet": "denoising UNet, one {w}-frame window, one step, batch 1 (no CFG)",
    "unet_cfg": "denoising UNet, one {w}-frame window, one step, batch 2 (CFG)",
    "reference_net": "ReferenceNet, once per avatar (1 latent)",
    "pose_guider": "pose guider, {w} frames",
    "audio_proj": "audio projection, {w} frames",
    "vae_encoder": "VAE encoder, once per avatar (1 image)",
    "vae_decoder": "VAE decoder, 1 frame",
    "clip": "CLIP ViT-L/14 image encoder, once per avatar (224²)",
    "wav2vec2_1s": "wav2vec2-base, 1 s of audio (25 tokens)",
    "wav2vec2_live_window": "wav2vec2-base, one live window ({ctx} s look-behind + {new} new "
    "frames)",
}
PER_AVATAR = ("reference_net", "vae_encoder", "clip")


# -- per output frame -------------------------------------------------------------------------


def frame_calls(
    steps: int, cfg: bool, mode: str, window: int = 12, overlap: int = 4
) -> dict[str, float]:
    """Calls of each network per output frame (per-avatar networks excluded).

    Both modes run ``steps`` UNet calls per window of ``window`` frames and emit
    ``window − overlap`` new frames per window (offline: stride ``window − overlap``, every frame
    in ``window / stride`` windows). Live re-runs the pose guider on the whole window and wav2vec2
    on a look-behind per window; offline runs them once per frame over the clip.
    """
    if mode not in ("live", "offline"):
        raise ValueError(f"unknown mode {mode!r}")
    new = window - overlap
    if new <= 0:
        raise ValueError("overlap must be smaller than the window")
    calls = {"unet_cfg" if cfg else "unet": steps / new, "audio_proj": 1 / window}
    calls["vae_decoder"] = 1.0
    if mode == "live":
        calls["pose_guider"] = 1 / new
        calls["wav2vec2_live_window"] = 1 / new
    else:
        calls["pose_guider"] = 1 / window
        calls["wav2vec2_1s"] = 1 / FPS
    return calls


def call_ms(cost: Cost, gpu: GPU, utilisation: float, activations: bool = False) -> float:
    """Roofline time of one call: max(compute at ``utilisation``, weight (+ activation) bytes)."""
    compute = cost.flops / (gpu.tflops * 1e12 * utilisation)
    moved = cost.weight_bytes + (cost.act_bytes if activations else 0.0)
    return 1e3 * max(compute, moved / (gpu.tb_per_s * 1e12))


def per_frame(
    costs: dict[str, Cost],
    steps: int,
    cfg: bool,
    mode: str,
    window: int = 12,
    overlap: int = 4,
    gpus: Iterable[GPU] = GPUS,
    utilisation: float = 0.4,
) -> dict[str, Any]:
    """FLOPs, bytes and projected ms per output frame (per-avatar work not included)."""
    calls = frame_calls(steps, cfg, mode, window, overlap)
    unet = "unet_cfg" if cfg else "unet"
    flops = {k: n * costs[k].flops for k, n in calls.items()}
    out: dict[str, Any] = {
        "mode": mode,
        "steps": steps,
        "cfg": cfg,
        "calls_per_frame": calls,
        "flops_by_network": flops,
        "flops": sum(flops.values()),
        "unet_flops": flops[unet],
        "weight_bytes": sum(n * costs[k].weight_bytes for k, n in calls.items()),
        "act_bytes": sum(n * costs[k].act_bytes for k, n in calls.items()),
    }
    for gpu in gpus:
        ms = sum(n * call_ms(costs[k], gpu, utilisation) for k, n in calls.items())
        ms_act = sum(n * call_ms(costs[k], gpu, utilisation, True) for k, n in calls.items())
        out[gpu.name] = {
            "ms_per_frame": ms,
            "fps": 1e3 / ms,
            "ms_per_frame_with_activations": ms_act,
            "fps_with_activations": 1e3 / ms_act,
        }
    return out


# -- CPU measurement --------------------------------------------------------------------------


def _median(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    t = median_time(fn, repeats, warmup)
    return {"median_ms": 1e3 * t["median_s"], "min_ms": 1e3 * t["min_s"],
            "max_ms": 1e3 * t["max_s"], "repeats": repeats}  # fmt: skip


def measure_cpu_tiny(window: int = 12, repeats: int = 5, threads: int = 2) -> dict[str, Any]:
    """Median CPU wall time of the ``tiny`` preset (random weights, fp32, 16² latents)."""
    from mmgt.weights.stage2_models import randomize

    torch.set_num_threads(threads)
    config = PRESETS["tiny"]
    torch.manual_seed(0)
    net = Stage2Net(config).eval()
    randomize(net, 0)
    u, a = config.unet, config.audio_proj
    h = u.sample_size
    ref_latent, clip = torch.randn(1, 4, h, h), torch.randn(1, 1, u.cross_attention_dim)
    poses = torch.rand(1, 3, window, 8 * h, 8 * h)
    windows = torch.randn(1, window, a.window, a.layers, a.channels)
    levels = len(u.block_out_channels)
    results: dict[str, Any] = {"threads": threads, "latent": h, "frame": 8 * h, "window": window}
    with torch.no_grad():
        bank = reference_bank(net.reference_unet, ref_latent, clip)
        pose = net.pose_guider(poses)
        tokens = net.audioproj(windows)
        results["reference_net"] = _median(
            lambda: reference_bank(net.reference_unet, ref_latent, clip), repeats
        )
        results["pose_guider"] = _median(lambda: net.pose_guider(poses), repeats)
        results["audio_proj"] = _median(lambda: net.audioproj(windows), repeats)
        for name, b in (("unet", 1), ("unet_cfg", 2)):
            args = (
                torch.randn(b, 4, window, h, h),
                500,
                clip.repeat(b, 1, 1),
                tokens.repeat(b, 1, 1, 1),
                _masks(b * window, h, h, levels, torch.device("cpu"), torch.float32),
                pose.repeat(b, 1, 1, 1),
                ReferenceRead(bank, window, uncond_rows=window * (b - 1)),
            )
            results[name] = _median(lambda args=args: net.denoising_unet(*args), repeats)
    return results


# -- report -----------------------------------------------------------------------------------


def _g(x: float) -> str:
    """Compact number: 3 significant digits."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def report(
    costs: dict[str, Cost],
    frames: list[dict[str, Any]],
    args: argparse.Namespace,
    cpu: dict[str, Any] | None,
    tiny: dict[str, Cost] | None,
) -> str:
    """The Markdown report."""
    w, new = args.window, args.window - args.overlap
    u = args.utilisation
    fmt = {"w": w, "ctx": args.audio_context, "new": new}
    lines = [
        f"# MMGT stage-2 compute accounting (official preset, {args.size}², "
        f"{w}-frame windows, overlap {args.overlap})",
        "",
        "FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on meta-device models "
        "(1 multiply-add = 2 FLOPs; matmuls, convolutions and attention only). Weights: fp16, "
        "2 bytes/parameter. Activation traffic: unfused estimate (every non-view op reads its "
        "inputs and writes its output once; attention counted as one fused op), an upper bound. "
        "Everything is counted in fp16, wav2vec2 included (the official pipeline runs wav2vec2 "
        "in fp32; its share of the work is negligible). Networks are built from their configs "
        "(SD1.5-width UNets, sd-vae-ft-mse, CLIP ViT-L/14, wav2vec2-base) with random weights.",
        "",
        "## Per network, per call",
        "",
        "| network / call | params (M) | weights fp16 (MB) | GFLOPs | activation traffic (GB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, cost in costs.items():
        lines.append(
            f"| {CALLS[key].format(**fmt)} | {_g(cost.params / 1e6)} | "
            f"{_g(cost.weight_bytes / 1e6)} | {_g(cost.flops / 1e9)} | {_g(cost.act_bytes / 1e9)} |"
        )
    ref = costs["reference_net"]
    once = sum(costs[k].flops for k in PER_AVATAR)
    lines += [
        "",
        f"- CFG / no-CFG UNet FLOPs: {costs['unet_cfg'].flops / costs['unet'].flops:.3f} (the "
        "unconditional half attends without the reference bank, so slightly < 2).",
        f"- Per-avatar work (ReferenceNet + VAE encoder + CLIP): {_g(once / 1e9)} GFLOPs once. "
        f"If the ReferenceNet were re-run per window it would add {_g(ref.flops / new / 1e9)} "
        f"GFLOPs per output frame ({_g(ref.flops / 1e9)} per window).",
        "",
        "## Per output frame",
        "",
        f"Steady state, {new} new frames per {w}-frame window in both modes; per-avatar work "
        f"excluded. Live: pose guider on every {w}-frame window, wav2vec2 on "
        f"{args.audio_context} s look-behind + {new} new frames per window (assumed); offline: "
        "pose guider, audio projection and wav2vec2 once per frame of the clip. Audio projection "
        "and VAE decoder once per frame in both.",
        "",
        "| mode | steps | CFG | UNet TFLOPs/frame | VAE decoder TFLOPs/frame | "
        "rest GFLOPs/frame | total TFLOPs/frame | weights streamed (GB/frame) | "
        "activation traffic (GB/frame) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in frames:
        vae = f["flops_by_network"]["vae_decoder"]
        rest = f["flops"] - f["unet_flops"] - vae
        lines.append(
            f"| {f['mode']} | {f['steps']} | {'yes' if f['cfg'] else 'no'} | "
            f"{f['unet_flops'] / 1e12:.2f} | {vae / 1e12:.2f} | {_g(rest / 1e9)} | "
            f"{f['flops'] / 1e12:.2f} | {f['weight_bytes'] / 1e9:.2f} | "
            f"{f['act_bytes'] / 1e9:.2f} |"
        )
    lines += [
        "",
        "## GPU projections — PROJECTIONS, NOT MEASUREMENTS",
        "",
        f"Assumptions: every network reaches {u:.0%} of the peak dense fp16 tensor throughput; "
        "per call, time = max(FLOPs / (peak × utilisation), fp16 weight bytes / DRAM bandwidth) "
        "(roofline, weights streamed once per call); no overlap between calls, no host, "
        "scheduler, pose drawing, mask or encoding cost; batch = one stream.",
        "",
    ]
    lines += [f"- {g.name}: {g.note}." for g in GPUS]
    lines += [
        "",
        "### Per call (ms)",
        "",
        "compute = FLOPs at the stated utilisation; weights = fp16 weights / bandwidth; "
        "+act = (weights + unfused activation traffic) / bandwidth (pessimistic memory time).",
        "",
        "| network / call | "
        + " | ".join(f"{g.name} compute | {g.name} weights | {g.name} +act" for g in GPUS)
        + " |",
        "|---|" + "---:|" * (3 * len(GPUS)),
    ]
    for key, cost in costs.items():
        cells = []
        for g in GPUS:
            cells.append(f"{cost.flops / (g.tflops * 1e9 * u):.3g}")
            cells.append(f"{cost.weight_bytes / (g.tb_per_s * 1e9):.3g}")
            cells.append(f"{(cost.weight_bytes + cost.act_bytes) / (g.tb_per_s * 1e9):.3g}")
        lines.append(f"| {CALLS[key].format(**fmt)} | " + " | ".join(cells) + " |")
    setup = {g.name: sum(call_ms(costs[k], g, u) for k in PER_AVATAR) for g in GPUS}
    lines += [
        "",
        "Per-avatar setup (ReferenceNet + VAE encoder + CLIP): "
        + ", ".join(f"{n} {ms:.1f} ms" for n, ms in setup.items())
        + ".",
        "",
        "### Frame rate (projected)",
        "",
        "| mode | steps | CFG | "
        + " | ".join(f"{g.name} ms/frame | {g.name} fps | {g.name} ×real-time" for g in GPUS)
        + " |",
        "|---|---:|---|" + "---:|" * (3 * len(GPUS)),
    ]
    for f in frames:
        cells = []
        for g in GPUS:
            p = f[g.name]
            cells += [f"{p['ms_per_frame']:.1f}", f"{p['fps']:.1f}", f"{p['fps'] / FPS:.2f}"]
        lines.append(
            f"| {f['mode']} | {f['steps']} | {'yes' if f['cfg'] else 'no'} | "
            + " | ".join(cells)
            + " |"
        )
    change = max(
        1 - f[g.name]["fps_with_activations"] / f[g.name]["fps"] for f in frames for g in GPUS
    )
    pessimistic = frames if change >= 0.005 else []
    if not pessimistic:
        lines += [
            "",
            "Pessimistic variant: counting the unfused activation traffic in each call's memory "
            f"time lowers no frame rate above by more than {100 * change:.2f} % (the UNet and "
            "VAE calls stay compute-bound at this utilisation), so it is not tabulated.",
        ]
    else:
        lines += [
            "",
            "Pessimistic variant (memory time includes the unfused activation traffic, fps):",
            "",
            "| mode | steps | CFG | " + " | ".join(f"{g.name} fps" for g in GPUS) + " |",
            "|---|---:|---|" + "---:|" * len(GPUS),
        ]
    for f in pessimistic:
        cells = [f"{f[g.name]['fps_with_activations']:.1f}" for g in GPUS]
        lines.append(
            f"| {f['mode']} | {f['steps']} | {'yes' if f['cfg'] else 'no'} | "
            + " | ".join(cells)
            + " |"
        )
    if cpu is not None and tiny is not None:
        lines += [
            "",
            f"## Measured: `tiny` preset on this CPU ({cpu['threads']} threads)",
            "",
            f"{cpu['frame']}² frames ({cpu['latent']}² latents), {cpu['window']}-frame window, "
            f"random weights, fp32, median of {cpu['unet']['repeats']} runs after one warm-up.",
            "",
            "| call | median ms | min ms | max ms | MFLOPs (counted) | GFLOP/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        names = {
            "reference_net": "ReferenceNet (1 latent)",
            "unet": "denoising UNet, 1 step, batch 1",
            "unet_cfg": "denoising UNet, 1 step, batch 2 (CFG)",
            "pose_guider": f"pose guider, {cpu['window']} frames",
            "audio_proj": f"audio projection, {cpu['window']} frames",
        }
        for key, label in names.items():
            t = cpu[key]
            fl = tiny[key].flops
            lines.append(
                f"| {label} | {t['median_ms']:.1f} | {t['min_ms']:.1f} | {t['max_ms']:.1f} | "
                f"{_g(fl / 1e6)} | {fl / (t['median_ms'] * 1e6):.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="frame side in pixels (latent = /8)")
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--utilisation", type=float, default=0.4, help="fraction of peak FLOPs")
    ap.add_argument("--audio-context", type=float, default=2.0, help="live wav2vec2 look-behind s")
    ap.add_argument("--repeats", type=int, default=5, help="CPU timing runs")
    ap.add_argument("--skip-cpu", action="store_true", help="skip the tiny-preset CPU timing")
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    costs = count_costs("official", args.size, args.window, args.overlap, args.audio_context)
    frames = [
        per_frame(costs, s, cfg, mode, args.window, args.overlap, utilisation=args.utilisation)
        for mode in ("live", "offline")
        for s in STEPS
        for cfg in (False, True)
    ]
    cpu = tiny = None
    if not args.skip_cpu:
        tiny_size = 8 * PRESETS["tiny"].unet.sample_size
        tiny = count_costs("tiny", tiny_size, args.window, args.overlap, args.audio_context)
        cpu = measure_cpu_tiny(args.window, args.repeats)
    print(report(costs, frames, args, cpu, tiny))
    print(f"_(report computed in {time.perf_counter() - t0:.1f} s)_")
    if args.json:
        from bench._common import invocation, machine

        payload = {
            "command": invocation(),
            "machine": machine(),
            "settings": vars(args) | {"json": str(args.json)},
            "gpus": [asdict(g) for g in GPUS],
            "per_call": {k: asdict(c) | {"weight_bytes": c.weight_bytes} for k, c in costs.items()},
            "per_frame": frames,
            "projections_not_measurements": True,
            "cpu_tiny": cpu,
            "cpu_tiny_flops": None if tiny is None else {k: c.flops for k, c in tiny.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
