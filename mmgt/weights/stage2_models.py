"""Every model stage 2 needs, in one bundle: the four networks, VAE, CLIP image encoder, wav2vec2.

:meth:`Stage2Models.from_folder` reads the official files of a weights folder (layout in
:mod:`mmgt.weights.stage2` and docs/weights.md) strictly. :meth:`Stage2Models.random` builds a
seeded, randomly initialised bundle at a small preset (``tiny``: 128² frames) with no branch
left at zero, so the whole stage-2 path runs in tests and on a CPU without any weights; its
video is noise, not a person.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmgt.errors import WeightsError
from mmgt.models.stage2 import PRESETS, Stage2Config, Stage2Net
from mmgt.weights.files import read_config
from mmgt.weights.smga import read_state_dict
from mmgt.weights.stage2 import (
    IMAGE_ENCODER_DIR,
    VAE_DIR,
    WAV2VEC_DIR,
    diff_state,
    load_stage2_net,
)


@dataclass
class Stage2Models:
    config: Stage2Config
    net: Stage2Net
    vae: nn.Module  # diffusers AutoencoderKL
    image_encoder: nn.Module  # transformers CLIPVisionModelWithProjection
    wav2vec: nn.Module  # transformers Wav2Vec2Model (all hidden states are used)
    resolution: int  # frame side in pixels (8 × the latent side)

    @classmethod
    def from_folder(
        cls, weights_dir: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "fp32"
    ) -> Stage2Models:
        """Load the official stage-2 files of ``weights_dir`` (strict; never downloads)."""
        return cls.with_net(weights_dir, load_stage2_net(Path(weights_dir)), device, dtype)

    @classmethod
    def with_net(
        cls, weights_dir: str | os.PathLike[str], net: Stage2Net, device: str = "cpu",
        dtype: str = "fp32",
    ) -> Stage2Models:  # fmt: skip
        """``net`` with the VAE, CLIP image encoder and wav2vec2 of ``weights_dir``."""
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from mmgt.weights.wav2vec import load_wav2vec2

        root = Path(weights_dir)
        vae = _from_folder(AutoencoderKL, AutoencoderKL.load_config, root / VAE_DIR)
        enc_dir = root / IMAGE_ENCODER_DIR
        _require(enc_dir)
        encoder = CLIPVisionModelWithProjection(
            read_config(CLIPVisionConfig.from_pretrained, enc_dir)
        )
        _load_strict(encoder, enc_dir, ignore=("vision_model.embeddings.position_ids",))
        wav2vec = load_wav2vec2(root / WAV2VEC_DIR)
        models = cls(net.config, net, vae, encoder, wav2vec, 8 * net.config.unet.sample_size)
        return models.to(device, dtype)

    @classmethod
    def random(cls, preset: str = "tiny", seed: int = 0) -> Stage2Models:
        """A seeded random bundle at a small preset (all branches non-zero)."""
        from diffusers import AutoencoderKL
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
            Wav2Vec2Config,
            Wav2Vec2Model,
        )

        if preset == "official":
            raise ValueError("the official preset is 2.3 B parameters; load real weights instead")
        config = PRESETS[preset]
        torch.manual_seed(seed)
        net = Stage2Net(config)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 32, 32),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=8 * config.unet.sample_size,
        )
        width = config.unet.cross_attention_dim
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                patch_size=32,
                projection_dim=width,
            )
        )
        w2v = config.audio_proj
        wav2vec = Wav2Vec2Model(
            Wav2Vec2Config(
                hidden_size=w2v.channels,
                num_hidden_layers=w2v.layers,
                num_attention_heads=2,
                intermediate_size=2 * w2v.channels,
                conv_dim=(16,) * 7,
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
            )
        )
        randomize(net, seed)
        models = cls(config, net, vae, encoder, wav2vec, 8 * config.unet.sample_size)
        return models.to("cpu", "fp32")

    def to(self, device: str, dtype: str) -> Stage2Models:
        """Move to ``device``; ``fp16`` casts the networks, VAE and CLIP (wav2vec2 stays fp32,
        as in the official inference)."""
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
        for module in (self.net, self.vae, self.image_encoder):
            module.to(device=device)
            if torch_dtype != torch.float32:
                module.to(dtype=torch_dtype)
            module.eval()
        self.wav2vec.to(device=device).eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.net.denoising_unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.denoising_unet.conv_in.weight.dtype


@torch.no_grad()
def randomize(module: nn.Module, seed: int, std: float = 0.05) -> None:
    """Overwrite every parameter like the official fixtures do: norms 1 + N(0, std), else
    N(0, std), so zero-initialised adapters and outputs are live in random test models."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        is_norm = "norm" in name.split(".")[-2] and name.endswith("weight") and p.ndim == 1
        p.copy_(noise + 1.0 if is_norm else noise)


def _require(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise WeightsError(f"missing {folder}/config.json (see docs/weights.md for the layout)")


def weights_file(folder: Path) -> Path:
    """The weights file of a pretrained-model folder (safetensors preferred)."""
    for name in (
        "model.safetensors",
        "diffusion_pytorch_model.safetensors",
        "pytorch_model.bin",
        "diffusion_pytorch_model.bin",
    ):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"no weights file (model.safetensors / pytorch_model.bin …) in {folder}")


def _load_strict(model: nn.Module, folder: Path, ignore: tuple[str, ...] = ()) -> None:
    state = {k: v for k, v in read_state_dict(weights_file(folder)).items() if k not in ignore}
    problems = diff_state({k: v.shape for k, v in model.state_dict().items()}, state)
    if problems:
        raise WeightsError(f"{folder} does not match its config:\n  " + "\n  ".join(problems[:40]))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _from_folder(cls, load_config, folder: Path) -> nn.Module:  # noqa: ANN001
    _require(folder)
    model = cls.from_config(read_config(load_config, folder))
    _load_strict(model, folder)
    return model
