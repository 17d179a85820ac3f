"""Stage-2 audio projection: a ±2-frame window of all wav2vec2 layers → per-frame audio tokens.

Official ``AudioProjModel`` (mmgt_official §4.4): the window (5 frames × 12 layers × 768) is
flattened window-major, then layer, then channel; three linear layers with ReLU between them
give ``context_tokens × output_dim`` values, reshaped to tokens and layer-normalised. The
tokens are the keys/values of the MM-HAA audio cross-attention. Key names are the official
ones (``proj1``, ``proj2``, ``proj3``, ``norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AudioProjConfig:
    window: int = 5  # frames i−2 … i+2
    layers: int = 12  # wav2vec2 hidden states used (all transformer layers)
    channels: int = 768  # wav2vec2 hidden width
    intermediate_dim: int = 512
    output_dim: int = 768  # = the UNet's audio_attention_dim
    context_tokens: int = 32

    @property
    def input_dim(self) -> int:
        return self.window * self.layers * self.channels


PRESETS: dict[str, AudioProjConfig] = {
    "official": AudioProjConfig(),
    # The official stage-2 fixture (AudioProjModel(5, 12, 32, 32, 32, 4)).
    "fixture": AudioProjConfig(channels=32, intermediate_dim=32, output_dim=32, context_tokens=4),
}


class AudioProjection(nn.Module):
    """(B, F, window, layers, channels) wav2vec2 windows → (B, F, tokens, output_dim)."""

    def __init__(self, config: AudioProjConfig = AudioProjConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.proj1 = nn.Linear(c.input_dim, c.intermediate_dim)
        self.proj2 = nn.Linear(c.intermediate_dim, c.intermediate_dim)
        self.proj3 = nn.Linear(c.intermediate_dim, c.context_tokens * c.output_dim)
        self.norm = nn.LayerNorm(c.output_dim)

    def forward(self, windows: Tensor) -> Tensor:
        b, f = windows.shape[:2]
        c = self.config
        x = windows.reshape(b * f, c.input_dim)  # (B·F, window·layers·channels)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(b * f, c.context_tokens, c.output_dim)
        return self.norm(tokens).reshape(b, f, c.context_tokens, c.output_dim)
