"""Stage 2 of MMGT as one module: the four networks of the official ``net-*.pth``.

``Stage2Net`` mirrors the official training ``Net`` so its state dict carries exactly the
checkpoint prefixes ``reference_unet.``, ``denoising_unet.``, ``pose_guider.``, ``audioproj.``.
The VAE, the CLIP image encoder and wav2vec2 are separate pretrained models (diffusers /
transformers classes, see :mod:`mmgt.weights.stage2`).

Presets:

* ``official``: SD1.5 widths (320/640/1280/1280), CLIP ViT-L/14 (768), wav2vec2-base (12 × 768)
  → 32 audio tokens × 768; ≈ 2 billion parameters with the VAE and CLIP.
* ``fixture``: the reduced widths of the official golden fixtures (32/32/64/64, context and
  audio width 32, 4 tokens); loads ``tests/fixtures/official/stage2_tiny_net.safetensors``.
* ``tiny``: the fixture sizes; a 12-frame window of 128² frames (16² latents) takes about half
  a second on two CPU cores, so whole pipelines run in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mmgt.models.audio_proj import AudioProjConfig, AudioProjection
from mmgt.models.pose_guider import PoseGuider, PoseGuiderConfig
from mmgt.models.reference import build_reference_unet
from mmgt.models.unet3d import DenoisingUNet3D, UNet3DConfig

PREFIXES = ("reference_unet", "denoising_unet", "pose_guider", "audioproj")


@dataclass(frozen=True)
class Stage2Config:
    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    pose_guider: PoseGuiderConfig = field(default_factory=PoseGuiderConfig)
    audio_proj: AudioProjConfig = field(default_factory=AudioProjConfig)

    def __post_init__(self) -> None:
        ch0 = self.unet.block_out_channels[0]
        if self.pose_guider.out_channels != ch0:
            raise ValueError(f"pose guider must output the UNet's first width {ch0}")
        if self.audio_proj.output_dim != self.unet.audio_attention_dim:
            raise ValueError("audio tokens must be as wide as the UNet's audio attention")


def _small(size: int) -> Stage2Config:
    unet = UNet3DConfig(
        block_out_channels=(32, 32, 64, 64),
        cross_attention_dim=32,
        audio_attention_dim=32,
        sample_size=size,
    )
    audio = AudioProjConfig(channels=32, intermediate_dim=32, output_dim=32, context_tokens=4)
    return Stage2Config(unet, PoseGuiderConfig(out_channels=32), audio)


PRESETS: dict[str, Stage2Config] = {
    "official": Stage2Config(),
    "fixture": _small(16),
    "tiny": _small(16),
}


class Stage2Net(nn.Module):
    """ReferenceNet + denoising UNet + pose guider + audio projection (official ``Net``)."""

    def __init__(self, config: Stage2Config = Stage2Config()) -> None:
        super().__init__()
        self.config = config
        self.reference_unet = build_reference_unet(config.unet.reference_config())
        self.denoising_unet = DenoisingUNet3D(config.unet)
        self.pose_guider = PoseGuider(config.pose_guider)
        self.audioproj = AudioProjection(config.audio_proj)
