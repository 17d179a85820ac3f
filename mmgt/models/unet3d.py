"""The stage-2 denoising UNet: SD1.5 layers per frame, motion modules, reference bank, MM-HAA.

Layout and key names are the official ``UNet3DConditionModel`` built by ``from_pretrained_2d``
with ``config/prompts/animation.yaml`` (mmgt_official §4.2), so ``net-*.pth`` loads strictly:

* ``conv_in`` → ``+ pose guider features`` → down blocks → mid block → up blocks → GroupNorm,
  SiLU, ``conv_out``. v-prediction.
* Down blocks 0–2: per layer resnet → spatial transformer (self-attention with the reference
  bank appended to K/V, cross-attention to the CLIP token) → MM-HAA audio module → motion
  module; then a stride-2 conv. Down block 3: resnet → motion module.
* Mid: resnet → spatial transformer → motion module → resnet (no audio module).
* Up blocks: 3 layers each of resnet (with the skip) → [spatial transformer] → motion module,
  then nearest ×2 + conv. No audio modules (unlike Hallo).

The 2D parts reuse diffusers blocks by import. Frames are folded into the batch as (B·F, C, H,
W) (sample-major), which is exactly what the official "inflated" per-frame convolutions and
GroupNorms compute; only the motion modules look across frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

from mmgt.models.mmhaa import OFFICIAL_REGION_WEIGHTS, AudioAttentionModule, BranchMasks
from mmgt.models.motion import MotionModule
from mmgt.models.reference import ReferenceRead, install_reference_processors, repeat_per_frame


@dataclass(frozen=True)
class UNet3DConfig:
    """Sizes of both UNets (SD1.5 ``unet/config.json`` names where they exist)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    heads: int = 8  # SD1.5's ``attention_head_dim: 8`` is used as the number of heads
    cross_attention_dim: int = 768  # CLIP image embedding width
    audio_attention_dim: int = 768  # audio token width
    in_channels: int = 4
    out_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    audio_blocks: int = 3  # down blocks that carry MM-HAA modules (official: 0, 1, 2)
    motion_heads: int = 8
    motion_max_len: int = 32
    sample_size: int = 64

    def reference_config(self) -> dict:
        """``UNet2DConditionModel`` kwargs of the matching SD1.5-layout ReferenceNet."""
        n = len(self.block_out_channels)
        return dict(
            sample_size=self.sample_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            attention_head_dim=self.heads,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps,
        )


@dataclass(frozen=True)
class StepInputs:
    """Everything one denoising call needs besides the latents, per folded row (B·F)."""

    frames: int
    temb: Tensor  # (B·F, 4·C0)
    context: Tensor  # (B·F, 1, cross_attention_dim)
    audio: Tensor | None  # (B·F, tokens, audio_attention_dim); None skips the audio modules
    masks: BranchMasks | None
    region_weights: Sequence[float]
    reference: ReferenceRead | None
    motion: bool  # False skips the motion modules (image-level training, process 1)


def _resnet(cin: int, cout: int, temb: int, cfg: UNet3DConfig) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=cin,
        out_channels=cout,
        temb_channels=temb,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
    )


def _spatial(channels: int, cfg: UNet3DConfig) -> Transformer2DModel:
    return Transformer2DModel(
        num_attention_heads=cfg.heads,
        attention_head_dim=channels // cfg.heads,
        in_channels=channels,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def _apply_spatial(attn: Transformer2DModel, h: Tensor, x: StepInputs) -> Tensor:
    kwargs = {"reference": x.reference}
    return attn(
        h, encoder_hidden_states=x.context, cross_attention_kwargs=kwargs, return_dict=False
    )[0]


class DownBlock3D(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        temb: int,
        cfg: UNet3DConfig,
        *,
        cross: bool,
        audio_level: int | None,
        downsample: bool,
    ) -> None:
        super().__init__()
        ins = [cin] + [cout] * (cfg.layers_per_block - 1)
        self.resnets = nn.ModuleList(_resnet(c, cout, temb, cfg) for c in ins)
        if cross:
            self.attentions = nn.ModuleList(_spatial(cout, cfg) for _ in ins)
        if audio_level is not None:
            heads = cfg.heads  # inner width from the block *input* channels (official quirk)
            self.audio_modules = nn.ModuleList(
                AudioAttentionModule(
                    cout, heads * (c // heads), heads, cfg.audio_attention_dim, audio_level
                )
                for c in ins
            )
        self.motion_modules = nn.ModuleList(
            MotionModule(cout, cfg.motion_heads, cfg.motion_max_len) for _ in ins
        )
        if downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(cout, use_conv=True, out_channels=cout, padding=1, name="op")]
            )

    def forward(self, h: Tensor, x: StepInputs) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, x.temb)
            if hasattr(self, "attentions"):
                h = _apply_spatial(self.attentions[i], h, x)
            if hasattr(self, "audio_modules") and x.audio is not None:
                h = self.audio_modules[i](h, x.audio, x.masks, x.region_weights)
            if x.motion:
                h = self.motion_modules[i](h, x.frames)
            skips.append(h)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, temb: int, cfg: UNet3DConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(channels, channels, temb, cfg) for _ in range(2))
        self.attentions = nn.ModuleList([_spatial(channels, cfg)])
        self.motion_modules = nn.ModuleList(
            [MotionModule(channels, cfg.motion_heads, cfg.motion_max_len)]
        )

    def forward(self, h: Tensor, x: StepInputs) -> Tensor:
        h = self.resnets[0](h, x.temb)
        h = _apply_spatial(self.attentions[0], h, x)
        if x.motion:
            h = self.motion_modules[0](h, x.frames)
        return self.resnets[1](h, x.temb)


class UpBlock3D(nn.Module):
    def __init__(
        self,
        cin: int,
        cprev: int,
        cout: int,
        temb: int,
        cfg: UNet3DConfig,
        *,
        cross: bool,
        upsample: bool,
    ) -> None:
        super().__init__()
        n = cfg.layers_per_block + 1
        skip_ch = [cout] * (n - 1) + [cin]
        res_in = [cprev] + [cout] * (n - 1)
        self.resnets = nn.ModuleList(
            _resnet(r + s, cout, temb, cfg) for r, s in zip(res_in, skip_ch, strict=True)
        )
        if cross:
            self.attentions = nn.ModuleList(_spatial(cout, cfg) for _ in range(n))
        self.motion_modules = nn.ModuleList(
            MotionModule(cout, cfg.motion_heads, cfg.motion_max_len) for _ in range(n)
        )
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(cout, use_conv=True, out_channels=cout)])

    def forward(self, h: Tensor, skips: list[Tensor], x: StepInputs, size: tuple | None) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), x.temb)
            if hasattr(self, "attentions"):
                h = _apply_spatial(self.attentions[i], h, x)
            if x.motion:
                h = self.motion_modules[i](h, x.frames)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h, output_size=size)
        return h


class DenoisingUNet3D(nn.Module):
    """(B, 4, F, h, w) noisy latents + conditions → (B, 4, F, h, w) v-prediction."""

    def __init__(self, config: UNet3DConfig = UNet3DConfig()) -> None:
        super().__init__()
        self.config = cfg = config
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        n = len(ch)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList(
            DownBlock3D(
                ch[max(i - 1, 0)],
                ch[i],
                temb,
                cfg,
                cross=i < n - 1,
                audio_level=i if i < cfg.audio_blocks else None,
                downsample=i < n - 1,
            )
            for i in range(n)
        )
        rev = ch[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock3D(
                rev[min(i + 1, n - 1)],
                rev[max(i - 1, 0)],
                rev[i],
                temb,
                cfg,
                cross=i > 0,
                upsample=i < n - 1,
            )
            for i in range(n)
        )
        self.mid_block = MidBlock3D(ch[-1], temb, cfg)  # registered after up_blocks (official)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        install_reference_processors(self)

    def time_embed(self, timestep: Tensor | int, batch: int, dtype: torch.dtype) -> Tensor:
        """(B, 4·C0) timestep embedding (sinusoidal in float32, then the MLP in ``dtype``)."""
        device = self.conv_in.weight.device
        t = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        return self.time_embedding(self.time_proj(t).to(dtype))

    def forward(
        self,
        latents: Tensor,  # (B, 4, F, h, w)
        timestep: Tensor | int,
        context: Tensor,  # (B, 1, cross_attention_dim) CLIP image embedding
        audio_tokens: Tensor | None,  # (B, F, tokens, audio_attention_dim)
        masks: BranchMasks | None,  # levels of (B·F, h_k·w_k)
        pose_features: Tensor | None = None,  # (B·F, C0, h, w) from the pose guider
        reference: ReferenceRead | None = None,
        region_weights: Sequence[float] = OFFICIAL_REGION_WEIGHTS,
        motion: bool = True,
    ) -> Tensor:
        """v-prediction. ``audio_tokens=None`` and ``motion=False`` run the network without its
        audio / motion modules: the official process-1 (image-level) network."""
        b, c, f, h, w = latents.shape
        if audio_tokens is not None and masks is None:
            raise ValueError("audio tokens need motion masks (zeros switch the branches off)")
        x = StepInputs(
            frames=f,
            temb=repeat_per_frame(self.time_embed(timestep, b, latents.dtype), f),
            context=repeat_per_frame(context, f),
            audio=None
            if audio_tokens is None
            else audio_tokens.reshape(b * f, *audio_tokens.shape[2:]),
            masks=masks,
            region_weights=region_weights,
            reference=reference,
            motion=motion,
        )
        hidden = self.conv_in(latents.transpose(1, 2).reshape(b * f, c, h, w))
        if pose_features is not None:
            hidden = hidden + pose_features
        skips = [hidden]
        for block in self.down_blocks:
            hidden, res = block(hidden, x)
            skips.extend(res)
        hidden = self.mid_block(hidden, x)
        for block in self.up_blocks:
            n_res = len(block.resnets)
            block_skips = skips[-n_res:]
            del skips[-n_res:]
            size = tuple(skips[-1].shape[-2:]) if skips and hasattr(block, "upsamplers") else None
            hidden = block(hidden, block_skips, x, size)
        out = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return out.reshape(b, f, -1, h, w).transpose(1, 2)
