"""Stage-2 training from the pretrained base models, where the official processes start.

* **Process 1** (``train_stage_1.py``): the ReferenceNet and the denoising UNet both start from
  ``sd-image-variations-diffusers/unet`` (the ReferenceNet without its head, the denoising UNet
  without its motion and audio modules, which keep their own initialisation), and the pose
  guider from ControlNet-openpose's conditioning embedding
  (``control_v11p_sd15_openpose/diffusion_pytorch_model.bin``, every
  ``controlnet_cond_embedding.*`` tensor except ``conv_out``, which stays zero).
* **Process 2** (``train_stage_2.py``): the networks are built at the layout of
  ``stable-diffusion-v1-5/unet/config.json``; the official code loads SD1.5's UNet weights and
  then overwrites every one of them with the process-1 files, so only those are read here
  (``--init``), with the AnimateDiff motion modules (``--motion-module``); the audio
  projection and MM-HAA modules start from their initialisation.

VAE, CLIP image encoder and wav2vec2 come from the same folder as for :meth:`from_folder
<mmgt.weights.stage2_models.Stage2Models.from_folder>`. Loading is strict apart from the parts
named above; every other missing or unexpected key is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from mmgt.errors import WeightsError
from mmgt.models.stage2 import Stage2Config, Stage2Net
from mmgt.train.stage2_parts import load_strict, video_only
from mmgt.weights.smga import read_state_dict
from mmgt.weights.stage2 import SD_UNET_CONFIG, WAV2VEC_DIR, infer_config
from mmgt.weights.stage2_models import Stage2Models, weights_file

PROCESS1_UNET = "sd-image-variations-diffusers/unet"
CONTROLNET_DIR = "control_v11p_sd15_openpose"
CONTROLNET_PREFIX = "controlnet_cond_embedding."
UNET_HEAD = ("conv_norm_out.", "conv_out.")  # the ReferenceNet has none


def _config(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"missing {path} (see docs/training_stage2.md for the base models)")
    return json.loads(path.read_text())


def base_config(unet_config: dict, wav2vec_config: dict) -> Stage2Config:
    """The networks' layout: the UNet's from its config, the audio projection's input from the
    wav2vec2 that feeds it (all its layers × its width; 5 × 12 × 768 for wav2vec2-base)."""
    config = infer_config({}, unet_config)
    proj = replace(config.audio_proj, channels=int(wav2vec_config["hidden_size"]),
                   layers=int(wav2vec_config["num_hidden_layers"]))  # fmt: skip
    return replace(config, audio_proj=proj)


def load_base_unet(net: Stage2Net, unet_dir: Path) -> None:
    """SD-style UNet weights (a diffusers folder) into both UNets, as process 1 starts."""
    path = weights_file(unet_dir)
    state = read_state_dict(path)
    load_strict(net.reference_unet, {k: v for k, v in state.items()
                                      if not k.startswith(UNET_HEAD)}, path)  # fmt: skip
    load_strict(net.denoising_unet, state, path, skip=video_only)


def controlnet_file(weights_dir: Path) -> Path | None:
    """The ControlNet-openpose weights of a weights folder, if there."""
    try:
        return weights_file(weights_dir / CONTROLNET_DIR)
    except WeightsError:
        return None


def load_controlnet_pose_guider(net: Stage2Net, path: Path) -> None:
    """The conditioning embedding of a ControlNet file into the pose guider (not ``conv_out``)."""
    state = {k[len(CONTROLNET_PREFIX) :]: v for k, v in read_state_dict(path).items()
             if k.startswith(CONTROLNET_PREFIX) and "conv_out" not in k}  # fmt: skip
    if not state:
        raise WeightsError(f"{path} has no {CONTROLNET_PREFIX}* tensors (not a ControlNet?)")
    load_strict(net.pose_guider, state, path, skip=lambda k: k.startswith("conv_out."))


def base_models(
    weights_dir: str | os.PathLike[str], process: int
) -> tuple[Stage2Models, list[str]]:
    """The stage-2 bundle a training ``process`` starts from, and notes on what was loaded."""
    root = Path(weights_dir)
    wav2vec = _config(root / WAV2VEC_DIR / "config.json")
    if process == 1:
        unet_dir = root / PROCESS1_UNET
        net = Stage2Net(base_config(_config(unet_dir / "config.json"), wav2vec))
        load_base_unet(net, unet_dir)
        notes = [f"both UNets from {unet_dir}"]
        cn = controlnet_file(root)
        if cn is None:
            notes.append(f"no {CONTROLNET_DIR}/: the pose guider starts from its initialisation "
                         "(the official process 1 starts it from ControlNet-openpose)")  # fmt: skip
        else:
            load_controlnet_pose_guider(net, cn)
            notes.append(f"pose guider from {cn}")
    else:
        net = Stage2Net(base_config(_config(root / SD_UNET_CONFIG), wav2vec))
        notes = ["networks at the SD1.5 layout; their weights come from --init (process 1)"]
    return Stage2Models.with_net(root, net), notes
