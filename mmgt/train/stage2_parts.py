"""Pieces of stage-2 training: what each process trains, the diffusion objective, weight files.

* :func:`trainable`: process 1 (official ``train_stage_1.py``) trains the ReferenceNet except
  its ``up_blocks.3``, the denoising UNet's spatial layers and the pose guider; process 2
  (``train_stage_2.py``) trains the audio projection and every denoising-UNet parameter under a
  module named ``*motion_modules*`` or ``*audio_modules*``.
* :class:`Stage2Objective`: frozen encoders (VAE → latents × 0.18215; the reference's CLIP
  image embedding as the diffusion renderer computes it), the ReferenceNet bank, pose-guider
  features, audio tokens, and the loss: v-prediction MSE on the official training schedule
  (``scaled_linear`` β, zero terminal SNR, 1000 steps) with noise offset and Min-SNR-γ weights;
  image dropout (no bank, CLIP of a zero image) and audio dropout (zero tokens after the
  projection) per sample.
* Files in the official layout: process 1 ``reference_unet-N.pth``, ``denoising_unet-N.pth``
  (without motion and audio modules, as the official process-1 UNet has none),
  ``pose_guider-N.pth``; process 2 ``net-N.pth`` (``Stage2Net.state_dict()``). All are plain
  tensor dicts written atomically; :func:`load_init` reads either kind strictly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mmgt.errors import WeightsError
from mmgt.models.mmhaa import BranchMasks
from mmgt.models.reference import ReferenceRead, reference_bank
from mmgt.models.stage2 import Stage2Net
from mmgt.models.stage2_steps import LATENT_SCALE
from mmgt.renderers.diffusion import clip_embed
from mmgt.schedulers.video import VideoSchedule, VideoScheduleConfig
from mmgt.train.stage2_data import Stage2Batch
from mmgt.weights.smga import read_state_dict
from mmgt.weights.stage2 import PREFIXES, diff_state, find_net_file
from mmgt.weights.stage2_models import Stage2Models

VIDEO_ONLY = ("motion_modules", "audio_modules")
PROCESS1_PARTS = PREFIXES[:3]  # reference_unet, denoising_unet, pose_guider
CLIP_SIZE = 224  # CLIP ViT input side


def video_only(name: str) -> bool:
    """Whether a denoising-UNet key belongs to a motion or MM-HAA audio module."""
    return any(k in name for k in VIDEO_ONLY)


def trainable(name: str, process: int) -> bool:
    """Whether the :class:`Stage2Net` parameter ``name`` is trained in ``process`` (1 or 2)."""
    prefix, _, rest = name.partition(".")
    if process == 1:
        if prefix == "reference_unet":
            return not rest.startswith("up_blocks.3.")  # frozen in the official process 1
        return prefix == "pose_guider" or (prefix == "denoising_unet" and not video_only(rest))
    return prefix == "audioproj" or (prefix == "denoising_unet" and video_only(rest))


def set_trainable(net: Stage2Net, process: int) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``process`` and return the trained parameters."""
    params = []
    for name, p in net.named_parameters():
        p.requires_grad_(trainable(name, process))
        if p.requires_grad:
            params.append(p)
    return params


@dataclass(frozen=True)
class Recipe:
    """Objective settings; defaults are the official ones (config/train/stage{1,2}.yaml)."""

    noise_offset: float = 0.05
    snr_gamma: float = 5.0  # 0 turns the Min-SNR weighting off
    snr_weighting: str = "official"  # min(SNR+1, γ)/(SNR+1); "diffusers": min(SNR, γ)/(SNR+1)
    image_drop: float = 0.1  # no reference bank, CLIP of a zero image
    audio_drop: float = 0.05  # zero audio tokens after the projection
    # The official training passes motion_scale [1, 2, 3], but its UNet applies it only on the
    # gradient-checkpointing path, which was off: training ran with [1, 1, 1].
    region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Encoded:
    """A batch after the frozen encoders (on the training device)."""

    latents: Tensor  # (B, 4, F, h, w), scaled
    reference: Tensor  # (B, 4, h, w), scaled
    clip: Tensor  # (B, 1, D)
    pose: Tensor  # (B, 3, F, R, R)
    windows: Tensor | None  # (B, F, 5, layers, C)
    masks: BranchMasks | None  # levels of (B·F, h_k·w_k)


@dataclass
class Draw:
    """The random part of one training step (fixed for validation)."""

    t: Tensor  # (B,) int64
    noise: Tensor  # (B, 4, F, h, w), noise offset included
    keep_image: Tensor  # (B,) bool
    keep_audio: Tensor  # (B,) bool


class Stage2Objective:
    """The stage-2 training loss of one process (see the module docstring)."""

    def __init__(self, models: Stage2Models, process: int, recipe: Recipe) -> None:
        self.models, self.process, self.recipe = models, process, recipe
        self.schedule = VideoSchedule(VideoScheduleConfig.training())
        # official: the CLIP encoder on an all-zero (already normalised) pixel tensor
        zeros = torch.zeros(1, 3, CLIP_SIZE, CLIP_SIZE, device=models.device, dtype=models.dtype)
        with torch.no_grad():
            self.null_clip = models.image_encoder(pixel_values=zeros).image_embeds[:, None]

    @property
    def device(self) -> torch.device:
        return self.models.device

    @torch.no_grad()
    def encode(self, batch: Stage2Batch, generator: torch.Generator | None = None) -> Encoded:
        """Frozen encoders; latents are sampled with ``generator`` (training, as the official
        code) or the distribution means without one (validation)."""
        b, f = batch.frames.shape[:2]
        frames = self._latents(batch.frames.flatten(0, 1), generator)  # (B·F, 4, h, w)
        dev = self.device
        return Encoded(
            latents=frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2),  # (B, 4, F, h, w)
            reference=self._latents(batch.reference, generator),
            clip=torch.cat([clip_embed(self.models, im) for im in batch.reference_images]),
            pose=batch.pose.to(dev),
            windows=None if batch.windows is None else batch.windows.to(dev),
            masks=None if batch.masks is None else batch.masks.to(dev, torch.float32),
        )

    def _latents(self, pixels: Tensor, generator: torch.Generator | None) -> Tensor:
        vae, out = self.models.vae, []
        for chunk in pixels.split(16):  # (≤16, 3, R, R) at a time bounds the VAE's memory
            dist = vae.encode(chunk.to(self.device)).latent_dist
            out.append(dist.mean if generator is None else dist.sample(generator=generator))
        return torch.cat(out) * LATENT_SCALE

    def draw(self, enc: Encoded, generator: torch.Generator, *, drop: bool = True) -> Draw:
        """Timesteps, offset noise and per-sample condition dropout from ``generator``."""
        b, r = enc.latents.shape[0], self.recipe
        n = self.schedule.config.num_train_timesteps
        t = torch.randint(0, n, (b,), generator=generator)
        noise = torch.randn(enc.latents.shape, generator=generator)  # (B, 4, F, h, w)
        offset = torch.randn((b, noise.shape[1], 1, 1, 1), generator=generator)
        noise = noise + r.noise_offset * offset  # per-sample, per-channel shift (official)
        p_drop = torch.tensor([[r.image_drop], [r.audio_drop]])
        keep = (torch.rand(2, b, generator=generator) >= p_drop) | (not drop)  # (2, B)
        dev = self.device
        return Draw(t.to(dev), noise.to(dev), keep[0].to(dev), keep[1].to(dev))

    def loss(self, net: Stage2Net, enc: Encoded, d: Draw) -> Tensor:
        """(B,) Min-SNR-weighted v-prediction MSE of each sample."""
        f = enc.latents.shape[2]
        x_t = self.schedule.add_noise(enc.latents, d.noise, d.t)  # (B, 4, F, h, w)
        target = self.schedule.velocity(enc.latents, d.noise, d.t)
        context = torch.where(d.keep_image[:, None, None], enc.clip, self.null_clip)  # (B, 1, D)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.process == 1):
            bank = reference_bank(net.reference_unet, enc.reference, context)
            pose = net.pose_guider(enc.pose)  # (B·F, C0, h, w)
        tokens = None
        if self.process == 2:
            tokens = net.audioproj(enc.windows)  # (B, F, tokens, D)
            tokens = tokens * d.keep_audio[:, None, None, None].to(tokens.dtype)
        v = net.denoising_unet(
            x_t,
            d.t,
            context,
            tokens,
            enc.masks if self.process == 2 else None,
            pose,
            ReferenceRead(bank, f, keep=d.keep_image),  # dropped samples attend without it
            self.recipe.region_weights,
            motion=self.process == 2,
        )  # (B, 4, F, h, w)
        mse = (v.float() - target.float()).pow(2).mean(dim=(1, 2, 3, 4))  # (B,)
        if self.recipe.snr_gamma <= 0:
            return mse
        r = self.recipe
        return mse * self.schedule.min_snr_weight(d.t, r.snr_gamma, r.snr_weighting)


def enable_checkpointing(net: Stage2Net) -> None:
    """Gradient checkpointing: diffusers' for the ReferenceNet, per block for the 3D UNet."""
    net.reference_unet.enable_gradient_checkpointing()
    unet = net.denoising_unet
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        block.forward = _checkpointed(block.forward)


def _checkpointed(forward):  # noqa: ANN001, ANN202
    def run(*args):  # noqa: ANN002, ANN202 - up blocks pop their skip list: give each run a copy
        return forward(*(list(a) if isinstance(a, list) else a for a in args))

    def wrapper(*args):  # noqa: ANN002, ANN202
        if not torch.is_grad_enabled():
            return forward(*args)
        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    return wrapper


# -- weight files ---------------------------------------------------------------------------
def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """``torch.save`` a plain tensor dict atomically (temp file + ``os.replace``)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def process1_state(net: Stage2Net) -> dict[str, dict[str, Tensor]]:
    """The three official process-1 state dicts (the UNet without motion and audio modules)."""
    unet = {k: v for k, v in net.denoising_unet.state_dict().items() if not video_only(k)}
    return {
        "reference_unet": net.reference_unet.state_dict(),
        "denoising_unet": unet,
        "pose_guider": net.pose_guider.state_dict(),
    }


def output_names(process: int, step: int) -> list[str]:
    """The file names one checkpoint of ``process`` at ``step`` writes."""
    parts = PROCESS1_PARTS if process == 1 else ("net",)
    return [f"{p}-{step}.pth" for p in parts]


def save_outputs(net: Stage2Net, process: int, folder: Path, step: int) -> list[Path]:
    """Write one checkpoint in the official layout; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    states = process1_state(net) if process == 1 else {"net": net.state_dict()}
    paths = [folder / n for n in output_names(process, step)]
    for state, path in zip(states.values(), paths, strict=True):
        save_tensors(state, path)
    return paths


def find_process1(folder: Path) -> dict[str, Path]:
    """The newest process-1 file of each part in ``folder`` or ``folder/stage_2/process_1``."""
    for root in (folder, folder / "stage_2" / "process_1"):
        found = {p: sorted(root.glob(f"{p}-*.pth"), key=_step) for p in PROCESS1_PARTS}
        if all(found.values()):
            return {p: files[-1] for p, files in found.items()}
    return {}


def _step(path: Path) -> int:
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def load_init(net: Stage2Net, source: str | os.PathLike[str]) -> str:
    """Load a net file, a folder with one (``net-*.pth``), or a folder with the three process-1
    files into ``net``, strictly (a process-1 UNet may lack the motion and audio modules, which
    keep their values). Returns what was loaded."""
    src = Path(source)
    net_file = src if src.is_file() else (find_net_file(src) if src.is_dir() else None)
    if net_file is not None:
        state = read_state_dict(net_file)
        load_strict(net, state, net_file)
        return str(net_file)
    parts = find_process1(src) if src.is_dir() else {}
    if not parts:
        raise WeightsError(
            f"no stage-2 weights in {src}: expected net-*.pth or the process-1 "
            "files reference_unet-N.pth, denoising_unet-N.pth, pose_guider-N.pth"
        )
    for prefix, path in parts.items():
        state = read_state_dict(path)
        module = getattr(net, prefix)
        optional = prefix == "denoising_unet" and not any(video_only(k) for k in state)
        load_strict(module, state, path, skip=video_only if optional else None)
    return ", ".join(str(p) for p in parts.values())


def load_motion_modules(net: Stage2Net, path: str | os.PathLike[str]) -> None:
    """Initialise the denoising UNet's motion modules from an AnimateDiff-layout checkpoint
    (``mm_sd_v15_v2.ckpt``: ``down_blocks.0.motion_modules.0.temporal_transformer…``)."""
    state = {k: v for k, v in read_state_dict(path).items() if "motion_modules" in k}
    unet = net.denoising_unet
    load_strict(unet, state, Path(path), skip=lambda k: "motion_modules" not in k)


def load_strict(module: nn.Module, state: dict[str, Tensor], path: Path, skip=None) -> None:  # noqa: ANN001
    """Load ``state`` into ``module``; every key must match except those ``skip`` accepts
    missing (they keep their values). Problems are reported by name, from ``path``."""
    expected = {k: v.shape for k, v in module.state_dict().items() if not (skip and skip(k))}
    problems = diff_state(expected, state)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise WeightsError(f"{path} does not match the networks ({len(problems)} problems):"
                           f"\n  {shown}")  # fmt: skip
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=skip is None)
