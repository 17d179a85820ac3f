"""Stage-2 networks as runner steps: named tensors in, named tensors out.

The renderer calls every stage-2 network through a :class:`mmgt.runtime.Runner`, so torch,
ONNX Runtime and TensorRT run the same code path. These modules give each network the flat,
tensor-only signature a runner (and an exported graph) needs:

* :class:`PoseGuiderStep`  ``pose_images`` (B, 3, F, H, W) → ``pose_features`` (B, F, C0, h, w)
* :class:`AudioProjStep`  ``windows`` (B, F, 5, layers, C) → ``tokens`` (B, F, T, D)
* :class:`VaeEncodeStep`  ``image`` (B, 3, H, W) in [−1, 1] → ``latent`` (B, 4, h, w), scaled
* :class:`VaeDecodeStep`  ``latent`` (B, 4, h, w) scaled → ``image`` (B, 3, H, W) in [0, 1]
* :class:`ReferenceStep`  ``reference_latent`` (1, 4, h, w), ``clip_embed`` (1, 1, D) →
  ``bank_0 … bank_{n−1}`` (1, h_k·w_k, C_k) float16, in :func:`bank_names` order
* :class:`UNetStep`  one denoising call over a window: ``latents`` (B, 4, F, h, w),
  ``timestep`` (1,), ``context`` (B, 1, D), ``audio_tokens`` (B, F, T, D), ``pose_features``
  (B, F, C0, h, w), ``region_weights`` (3,), ``bank_keep`` (B,) bool, nine masks
  ``mask_{full,face,lip}_{0,1,2}`` (B, F, h_k·w_k) and the bank → ``v`` (B, 4, F, h, w).

Frames stay a separate axis at every input (never folded into the batch), so batch and frames
can be dynamic axes of an export. CFG's unconditional half drops the bank through ``bank_keep``
(an attention mask over the bank keys) rather than a row count, so one graph serves both.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmgt.models.mmhaa import BRANCHES, BranchMasks
from mmgt.models.reference import ReferenceRead, bank_names, reference_bank
from mmgt.models.unet3d import DenoisingUNet3D

LATENT_SCALE = 0.18215  # SD1.5 VAE scaling factor
PER_FRAME_CHUNK = 24  # frames per call of the per-frame networks (pose guider, audio projection)
STAGE2_NETWORKS = ("pose_guider", "audio_proj", "vae_encoder", "vae_decoder", "reference_net",
                   "unet_step")  # fmt: skip
MASK_LEVELS = 3
MASK_NAMES = tuple(f"mask_{b}_{k}" for b in BRANCHES for k in range(MASK_LEVELS))


class PoseGuiderStep(nn.Module):
    input_names = ("pose_images",)
    output_names = ("pose_features",)

    def __init__(self, pose_guider: nn.Module) -> None:
        super().__init__()
        self.pose_guider = pose_guider

    def forward(self, pose_images: Tensor) -> Tensor:
        b, f = pose_images.shape[0], pose_images.shape[2]
        folded = self.pose_guider(pose_images)  # (B·F, C0, h, w)
        return folded.reshape(b, f, *folded.shape[1:])


class AudioProjStep(nn.Module):
    input_names = ("windows",)
    output_names = ("tokens",)

    def __init__(self, audio_proj: nn.Module) -> None:
        super().__init__()
        self.audio_proj = audio_proj

    def forward(self, windows: Tensor) -> Tensor:
        return self.audio_proj(windows)


class VaeEncodeStep(nn.Module):
    input_names = ("image",)
    output_names = ("latent",)

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: Tensor) -> Tensor:
        return self.vae.encode(image).latent_dist.mean * LATENT_SCALE


class VaeDecodeStep(nn.Module):
    input_names = ("latent",)
    output_names = ("image",)

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: Tensor) -> Tensor:
        return (self.vae.decode(latent / LATENT_SCALE).sample / 2 + 0.5).clamp(0, 1)


class ReferenceStep(nn.Module):
    """The ReferenceNet pass that writes the bank, one output per bank entry."""

    input_names = ("reference_latent", "clip_embed")

    def __init__(self, reference_unet: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.reference_unet = reference_unet
        self.bank_names = tuple(names)
        self.output_names = tuple(f"bank_{i}" for i in range(len(names)))

    def forward(self, reference_latent: Tensor, clip_embed: Tensor) -> tuple[Tensor, ...]:
        bank = reference_bank(self.reference_unet, reference_latent, clip_embed)
        return tuple(bank[n] for n in self.bank_names)


class UNetStep(nn.Module):
    """One denoising call of the 3D UNet over a window, with every condition as a tensor."""

    output_names = ("v",)

    def __init__(self, unet: DenoisingUNet3D, names: list[str]) -> None:
        super().__init__()
        self.unet = unet
        self.bank_names = tuple(names)
        bank = tuple(f"bank_{i}" for i in range(len(names)))
        self.input_names = (
            "latents", "timestep", "context", "audio_tokens", "pose_features",
            "region_weights", "bank_keep", *MASK_NAMES, *bank,
        )  # fmt: skip

    def forward(self, **t: Tensor) -> Tensor:
        latents = t["latents"]  # (B, 4, F, h, w)
        b, f = latents.shape[0], latents.shape[2]
        levels = {
            br: tuple(t[f"mask_{br}_{k}"].reshape(b * f, -1) for k in range(MASK_LEVELS))
            for br in BRANCHES
        }  # each (B·F, h_k·w_k)
        bank = {name: t[f"bank_{i}"] for i, name in enumerate(self.bank_names)}
        pose = t["pose_features"]
        return self.unet(
            latents,
            t["timestep"],
            t["context"],
            t["audio_tokens"],
            BranchMasks(levels["full"], levels["face"], levels["lip"]),
            pose.reshape(b * f, *pose.shape[2:]),
            ReferenceRead(bank, f, keep=t["bank_keep"]),
            t["region_weights"],
        )


def shared_bank_names(reference_unet: nn.Module, unet: nn.Module) -> list[str]:
    """Bank entries the ReferenceNet writes and the denoising UNet reads, in module order."""
    written = set(bank_names(reference_unet))
    return [n for n in bank_names(unet) if n in written]


def mask_inputs(masks: BranchMasks, batch: int, frames: int) -> dict[str, Tensor]:
    """The nine mask inputs (B, F, h_k·w_k) of a (B·F)-row :class:`BranchMasks`."""
    out = {}
    for br in BRANCHES:
        for k, m in enumerate(getattr(masks, br)):
            out[f"mask_{br}_{k}"] = m.reshape(batch, frames, -1)
    return out


def steps_of(models) -> dict[str, nn.Module]:  # noqa: ANN001 - Stage2Models (avoids a cycle)
    """Every stage-2 step module of a model bundle, by network name (:data:`STAGE2_NETWORKS`
    order). Each has ``input_names`` and ``output_names`` (its runner and export names)."""
    net = models.net
    names = shared_bank_names(net.reference_unet, net.denoising_unet)
    return {
        "pose_guider": PoseGuiderStep(net.pose_guider),
        "audio_proj": AudioProjStep(net.audioproj),
        "vae_encoder": VaeEncodeStep(models.vae),
        "vae_decoder": VaeDecodeStep(models.vae),
        "reference_net": ReferenceStep(net.reference_unet, names),
        "unet_step": UNetStep(net.denoising_unet, names),
    }
