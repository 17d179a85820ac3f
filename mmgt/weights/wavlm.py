"""Loading WavLM (the official stage-1 audio encoder) as a ``transformers.WavLMModel``.

Two checkpoint layouts are accepted, both read without running any pickled code and without
touching the network (only local paths; nothing is ever downloaded):

* **transformers folder** (main path): ``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin`` (or their sharded ``*.index.json`` forms). The config is read with
  ``WavLMConfig.from_pretrained(folder, local_files_only=True)``; the tensors are read here with
  ``safetensors`` or ``torch.load(weights_only=True)`` (transformers 5's own ``from_pretrained``
  also defaults to ``weights_only=True`` for ``.bin``, but it only *warns* about missing keys).
* **Microsoft's original layout** (``WavLM-Large.pt``): a dict ``{"cfg": {...}, "model": state}``
  with fairseq-style names, read with ``torch.load(weights_only=True)``; or an original-layout
  ``.safetensors`` plus its ``cfg`` dict. :func:`config_from_original` and
  :func:`wavlm_from_original` map it to transformers. This mapping was verified only with the
  tiny random fixture in the same layout (``tests/fixtures/official/wavlm_tiny.safetensors``),
  not with the real ``WavLM-Large.pt``.

Loading is strict: every missing or unexpected key is reported by name, shapes are checked, and
after loading every model tensor is compared with its source, so no parameter can silently stay
randomly initialised. That matters for the weight-normed positional conv: the original stores
``weight_g``/``weight_v``, while transformers 5 with torch >= 2.1 names them
``…conv.parametrizations.weight.original0``/``original1`` (older stacks silently left it random,
fixture README I.4 item 10). Both spellings are mapped to whatever the built model uses.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmgt.errors import WeightsError
from mmgt.weights.files import load_safetensors_file, load_torch_file, read_config

if TYPE_CHECKING:
    from transformers import WavLMConfig, WavLMModel

ORIGINAL_SUFFIXES = (".pt", ".pth", ".ckpt")
_POS = "encoder.pos_conv_embed.conv."
_WN_NEW = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_WN_OLD = ("weight_g", "weight_v")
_L = r"^encoder\.layers\.(\d+)\."
_HL = r"encoder.layers.\1."
_FE = r"^feature_extractor\.conv_layers\."
_HFE = r"feature_extractor.conv_layers."
# (original regex, transformers template); {g}/{v} = the model's weight-norm names.
_ORIGINAL_TO_HF = (
    (_FE + r"(\d+)\.0\.(weight|bias)$", _HFE + r"\1.conv.\2"),
    (_FE + r"(\d+)\.2\.1\.(weight|bias)$", _HFE + r"\1.layer_norm.\2"),  # extractor layer_norm
    (_FE + r"0\.2\.(weight|bias)$", _HFE + r"0.layer_norm.\1"),  # extractor "default" (group)
    (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^encoder\.pos_conv\.0\.bias$", _POS + "bias"),
    (r"^encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)$", _POS + "{g}"),
    (r"^encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)$", _POS + "{v}"),
    (_L + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)$", _HL + r"attention.\2_proj.\3"),
    (_L + r"self_attn\.grep_linear\.(weight|bias)$", _HL + r"attention.gru_rel_pos_linear.\2"),
    (_L + r"self_attn\.grep_a$", _HL + "attention.gru_rel_pos_const"),
    (_L + r"self_attn\.relative_attention_bias\.weight$", _HL + "attention.rel_attn_embed.weight"),
    (_L + r"self_attn_layer_norm\.(weight|bias)$", _HL + r"layer_norm.\2"),
    (_L + r"fc1\.(weight|bias)$", _HL + r"feed_forward.intermediate_dense.\2"),
    (_L + r"fc2\.(weight|bias)$", _HL + r"feed_forward.output_dense.\2"),
    (_L + r"final_layer_norm\.(weight|bias)$", _HL + r"final_layer_norm.\2"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
)
_REQUIRED_CFG = (
    "encoder_embed_dim", "encoder_layers", "encoder_attention_heads", "encoder_ffn_embed_dim",
    "conv_feature_layers", "extractor_mode", "layer_norm_first", "conv_bias", "conv_pos",
    "conv_pos_groups", "relative_position_embedding", "gru_rel_pos", "num_buckets", "max_distance",
)  # fmt: skip
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickle that carries code is refused, not run."""
    return load_torch_file(path)


def _eval_layers(node: ast.AST) -> Any:
    """Evaluate a ``conv_feature_layers`` expression: int tuples in lists, ``+`` and ``*`` only."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_eval_layers(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval_layers(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
        left, right = _eval_layers(node.left), _eval_layers(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if not 0 <= (right if isinstance(right, int) else left) <= 64:  # no giant repeats
            raise ValueError("repeat count out of range")
        return left * right
    raise ValueError(f"unsupported syntax {ast.dump(node)}")


def config_from_original(cfg: Mapping[str, Any]) -> WavLMConfig:
    """``transformers.WavLMConfig`` for an original-layout ``cfg`` dict (``WavLMConfig`` fields).

    Verified only with the tiny random fixture's cfg, not with the real ``WavLM-Large.pt``.
    """
    from transformers import WavLMConfig

    missing = [k for k in _REQUIRED_CFG if k not in cfg]
    if missing:
        raise WeightsError(f"WavLM cfg lacks {missing}")
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise WeightsError("only WavLM with gated relative position bias is supported")
    if cfg["extractor_mode"] not in ("layer_norm", "default"):
        raise WeightsError(f"unknown extractor_mode {cfg['extractor_mode']!r}")
    act = cfg.get("activation_fn", "gelu")
    if act not in _ACTIVATIONS:
        raise WeightsError(f"unsupported activation_fn {act!r}")
    try:
        layers = _eval_layers(ast.parse(str(cfg["conv_feature_layers"]), mode="eval").body)
        dims, kernels, strides = (list(c) for c in zip(*layers, strict=True))
    except (SyntaxError, ValueError, TypeError) as exc:
        raise WeightsError(f"bad conv_feature_layers {cfg['conv_feature_layers']!r}") from exc
    return WavLMConfig(
        hidden_size=int(cfg["encoder_embed_dim"]),
        num_hidden_layers=int(cfg["encoder_layers"]),
        num_attention_heads=int(cfg["encoder_attention_heads"]),
        intermediate_size=int(cfg["encoder_ffn_embed_dim"]),
        hidden_act=_ACTIVATIONS[act],
        conv_dim=dims,
        conv_kernel=kernels,
        conv_stride=strides,
        conv_bias=bool(cfg["conv_bias"]),
        feat_extract_norm="layer" if cfg["extractor_mode"] == "layer_norm" else "group",
        do_stable_layer_norm=bool(cfg["layer_norm_first"]),
        num_conv_pos_embeddings=int(cfg["conv_pos"]),
        num_conv_pos_embedding_groups=int(cfg["conv_pos_groups"]),
        num_buckets=int(cfg["num_buckets"]),
        max_bucket_distance=int(cfg["max_distance"]),
        hidden_dropout=float(cfg.get("dropout", 0.1)),
        attention_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", 0.0)),
        feat_proj_dropout=float(cfg.get("dropout_input", 0.0)),
        layerdrop=float(cfg.get("encoder_layerdrop", 0.0)),
        mask_time_prob=0.05,  # > 0 so that `masked_spec_embed` (original `mask_emb`) exists
    )


def _weight_norm_names(model: torch.nn.Module) -> tuple[str, str]:
    return _WN_NEW if _POS + _WN_NEW[0] in model.state_dict() else _WN_OLD


def map_original_state_dict(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original (fairseq-style) names → transformers names; also returns the unmapped keys."""
    g, v = _weight_norm_names(model)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        for pattern, template in _ORIGINAL_TO_HF:
            if re.match(pattern, key):
                out[re.sub(pattern, template.format(g=g, v=v), key)] = tensor
                break
        else:
            unmapped.append(key)
    return out, unmapped


def _load_strict(
    model: WavLMModel,
    state: Mapping[str, torch.Tensor],
    source: str,
    extra: list[str] | None = None,
) -> WavLMModel:
    """Load ``state`` into ``model`` strictly, then check every tensor really arrived."""
    own = model.state_dict()
    problems = [f"unexpected: {k}" for k in extra or ()]
    problems += [f"missing: {k}" for k in own if k not in state]
    problems += [f"unexpected: {k}" for k in state if k not in own]
    for k, t in state.items():
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            problems.append(f"not a float tensor: {k}")
        elif k in own and own[k].shape != t.shape:
            problems.append(
                f"shape {k}: checkpoint {tuple(t.shape)} vs model {tuple(own[k].shape)}"
            )
    if problems:
        raise WeightsError(f"{source} does not match the WavLM model:\n  " + "\n  ".join(problems))
    state = {k: t.detach().to(torch.float32) for k, t in state.items()}
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    stale = [k for k, t in state.items() if not torch.equal(loaded[k], t)]
    if stale:  # e.g. a parametrisation that ignored the value: never leave random weights
        raise WeightsError(f"{source}: tensors did not load: {stale}")
    return model.float().eval().requires_grad_(False)


def wavlm_from_original(
    state_dict: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], *, source: str = "checkpoint"
) -> WavLMModel:
    """``WavLMModel`` (eval, fp32, CPU) from an original-layout state dict and its ``cfg``.

    Verified only with the tiny random fixture in the same layout, not with the real
    ``WavLM-Large.pt``.
    """
    from transformers import WavLMModel

    model = WavLMModel(config_from_original(cfg))
    mapped, unmapped = map_original_state_dict(state_dict, model)
    return _load_strict(model, mapped, source, extra=unmapped)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    state = _torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise WeightsError(f"{path} is not a flat state dict of tensors")
    return state


def _load_folder(folder: Path) -> WavLMModel:
    from transformers import WavLMConfig, WavLMModel

    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} has no config.json (expected a transformers WavLM folder)")
    config = read_config(WavLMConfig.from_pretrained, folder)
    if config.model_type != "wavlm":
        raise WeightsError(f"{folder}/config.json is a {config.model_type!r} config, not wavlm")
    for name in ("model.safetensors", "pytorch_model.bin"):
        files = [folder / name]
        if not files[0].is_file() and (folder / f"{name}.index.json").is_file():
            index_file = folder / f"{name}.index.json"
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index_file} is not a shard index ({exc})") from exc
            files = [folder / f for f in sorted(set(weight_map.values()))]
        if all(f.is_file() for f in files):
            break
    else:
        raise WeightsError(f"{folder} has no model.safetensors or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_read_tensors(f))
    if state and all(k.startswith("wavlm.") for k in state):  # saved from a WavLMFor* head model
        state = {k[len("wavlm.") :]: t for k, t in state.items()}
    model = WavLMModel(config)
    g, v = _weight_norm_names(model)
    renames = {
        _POS + old: _POS + new for old, new in zip(_WN_OLD + _WN_NEW, (g, v) * 2, strict=True)
    }
    state = {renames.get(k, k): t for k, t in state.items()}
    return _load_strict(model, state, str(folder))


def load_wavlm(
    path: str | os.PathLike[str], *, cfg: Mapping[str, Any] | str | os.PathLike[str] | None = None
) -> WavLMModel:
    """Load WavLM as a ``transformers.WavLMModel`` in eval mode, fp32, on the CPU.

    ``path`` is a transformers folder, an original ``WavLM-Large.pt``-style ``.pt``/``.pth``
    (``{"cfg", "model"}``), or an original-layout ``.safetensors``; the latter needs ``cfg``:
    the cfg dict, or a JSON file holding it (at the top level or under ``"cfg"``).
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise WeightsError(f"WavLM checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        if cfg is None:
            raise WeightsError(f"{path} is an original-layout state dict: pass its cfg too")
        state = _read_tensors(path)
    elif path.suffix in ORIGINAL_SUFFIXES:
        ckpt = _torch_load(path)
        if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)):
            raise WeightsError(f"{path} is not an original WavLM checkpoint ({{'cfg', 'model'}})")
        state, cfg = ckpt["model"], cfg if cfg is not None else ckpt.get("cfg")
        if not isinstance(cfg, Mapping):
            raise WeightsError(f"{path} has no 'cfg' dict")
    else:
        raise WeightsError(f"{path}: expected a folder, .safetensors or {ORIGINAL_SUFFIXES}")
    if not isinstance(cfg, Mapping):
        loaded = json.loads(Path(cfg).read_text())
        cfg = loaded.get("cfg", loaded)
    return wavlm_from_original(state, cfg, source=str(path))
