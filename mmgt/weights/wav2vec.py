"""Loading wav2vec2 (the official stage-2 audio encoder) as a ``transformers.Wav2Vec2Model``.

The input is a local transformers folder (nothing is ever downloaded): ``config.json`` plus
``model.safetensors`` or ``pytorch_model.bin`` (or their sharded ``*.index.json`` forms), and
optionally ``preprocessor_config.json``. The official model, ``wav2vec2-base-960h``, is a
``Wav2Vec2ForCTC`` checkpoint: its keys carry a ``wav2vec2.`` prefix, which is stripped, and its
CTC head ``lm_head.*`` is dropped (stage 2 uses the hidden states only).

Loading is strict, with the helpers of :mod:`mmgt.weights.wavlm`: every missing or unexpected
key is reported by name, shapes are checked, and every model tensor is compared with its source
after loading. The positional conv's weight norm is stored as ``weight_g``/``weight_v`` in the
real checkpoint and the fixture, but transformers 5 with torch >= 2.1 names it
``…conv.parametrizations.weight.original0``/``original1``; both spellings are mapped to the built
model's names, so the pos-conv can never silently stay random. ``masked_spec_embed`` is only used
for training-time masking: it is loaded when both sides have it, dropped when the config does not
create it, and left at its initial value when the checkpoint lacks it.

``preprocessor_config.json`` decides ``do_normalize`` (default True, as in wav2vec2-base-960h);
it is stored as ``model.config.do_normalize`` and read by :mod:`mmgt.audio.wav2vec`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmgt.errors import WeightsError
from mmgt.weights.files import read_config
from mmgt.weights.wavlm import (
    _POS,
    _WN_NEW,
    _WN_OLD,
    _load_strict,
    _read_tensors,
    _weight_norm_names,
)

if TYPE_CHECKING:
    from transformers import Wav2Vec2Model

PREFIX = "wav2vec2."  # Wav2Vec2For* head models keep the encoder under this prefix
HEAD_PREFIXES = ("lm_head.",)  # Wav2Vec2ForCTC's head: ignored
OPTIONAL = ("masked_spec_embed",)  # training-time masking only, unused at inference
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAMPLE_RATE = 16000


def _weight_files(folder: Path) -> list[Path]:
    """The weights file of ``folder``, or the shards its ``*.index.json`` lists."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise WeightsError(f"{index} lists shards that are not there: {missing}")
            return [folder / s for s in shards]
    raise WeightsError(f"{folder} has no {' or '.join(WEIGHT_FILES)}")


def strip_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Wav2Vec2ForCTC`` layout → ``Wav2Vec2Model`` names: drop ``wav2vec2.`` and ``lm_head.*``.

    Other keys outside the prefix are kept, so that the strict load reports them by name.
    """
    if not any(k.startswith(PREFIX) for k in state):
        return state
    return {k.removeprefix(PREFIX): t for k, t in state.items() if not k.startswith(HEAD_PREFIXES)}


def _read_do_normalize(folder: Path) -> bool:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return True  # wav2vec2-base-960h's (and the official code's) setting
    pre = json.loads(path.read_text())
    if pre.get("sampling_rate", SAMPLE_RATE) != SAMPLE_RATE or pre.get("feature_size", 1) != 1:
        raise WeightsError(f"{path}: expected 16 kHz mono input (sampling_rate, feature_size)")
    return bool(pre.get("do_normalize", True))


def load_wav2vec2(folder: str | os.PathLike[str]) -> Wav2Vec2Model:
    """Load a transformers wav2vec2 folder strictly as a ``Wav2Vec2Model`` (eval, fp32, CPU)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} has no config.json (expected a transformers wav2vec2 folder)")
    config = read_config(Wav2Vec2Config.from_pretrained, folder)
    if config.model_type != "wav2vec2":
        raise WeightsError(f"{folder}/config.json is a {config.model_type!r} config, not wav2vec2")
    do_normalize = _read_do_normalize(folder)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        state.update(_read_tensors(f))
    state = strip_head(state)
    model = Wav2Vec2Model(config)
    g, v = _weight_norm_names(model)
    pairs = zip(_WN_OLD + _WN_NEW, (g, v) * 2, strict=True)
    renames = {_POS + old: _POS + new for old, new in pairs}
    state = {renames.get(k, k): t for k, t in state.items()}
    own = model.state_dict()
    for k in OPTIONAL:
        if k in own and k not in state:
            state[k] = own[k]
        elif k in state and k not in own:
            del state[k]
    try:
        model = _load_strict(model, state, str(folder))
    except WeightsError as exc:  # the shared helper names WavLM in its message
        raise WeightsError(str(exc).replace("the WavLM model", "the Wav2Vec2 model")) from None
    model.config.do_normalize = do_normalize
    return model
