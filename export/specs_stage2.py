"""Export specs of the stage-2 networks (the steps of :mod:`mmgt.models.stage2_steps`).

Dynamic axes are the sizes the renderer varies: ``frames`` of a window (a live window is 8 or
12 frames, offline windows 12; the per-frame pose guider and audio projection take clips in
chunks of up to ``PER_FRAME_CHUNK`` frames), ``batch`` 1 or 2 (the CFG pair) for the UNet, and
the number of frames decoded or encoded at once for the VAE. The ReferenceNet runs once per
avatar at one size. Sample inputs come from seeded noise; masks are in [0, 1] and, like the
official wiring, the ``full`` branch is 1 + lips.
"""

from __future__ import annotations

import torch
from torch import Tensor

from export.specs import Axis, NetworkSpec
from mmgt.models.mmhaa import BRANCHES
from mmgt.models.stage2_steps import MASK_LEVELS, PER_FRAME_CHUNK, steps_of
from mmgt.weights.stage2_models import Stage2Models


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g)


def stage2_specs(models: Stage2Models, window: int = 12) -> list[NetworkSpec]:
    """One spec per stage-2 network of ``models`` (fp32 CPU modules)."""
    steps = steps_of(models)
    cfg = models.config
    res, lat = models.resolution, cfg.unet.sample_size
    ctx_dim, proj = cfg.unet.cross_attention_dim, cfg.audio_proj
    max_frames = min(2 * window, cfg.unet.motion_max_len)
    frames = Axis("frames", 2, window, max_frames, window // 2 - 1)
    clip_frames = Axis("frames", 1, window, PER_FRAME_CHUNK, 5)  # callers chunk longer clips
    batch = Axis("batch", 1, 2, 2, 1)
    images = Axis("batch", 1, 2, window, 1)

    with torch.no_grad():  # the bank's shapes, from one ReferenceNet pass
        ref_sample = {"reference_latent": torch.zeros(1, 4, lat, lat),
                      "clip_embed": torch.zeros(1, 1, ctx_dim)}  # fmt: skip
        bank_shapes = [tuple(b.shape) for b in steps["reference_net"](**ref_sample)]

    def seeded(fn):  # noqa: ANN001, ANN202 - make_inputs with a fixed seed
        return lambda size, seed=0: fn(size, torch.Generator().manual_seed(seed))

    def pose_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        return {"pose_images": torch.rand(1, 3, size["frames"], res, res, generator=g)}

    def proj_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        shape = (1, size["frames"], proj.window, proj.layers, proj.channels)
        return {"windows": _randn(g, *shape)}

    def encode_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        return {"image": torch.rand(size["batch"], 3, res, res, generator=g) * 2 - 1}

    def decode_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        return {"latent": _randn(g, size["batch"], 4, lat, lat)}

    def reference_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        return {"reference_latent": _randn(g, 1, 4, lat, lat),
                "clip_embed": _randn(g, 1, 1, ctx_dim)}  # fmt: skip

    def unet_inputs(size: dict[str, int], g: torch.Generator) -> dict[str, Tensor]:
        b, f = size["batch"], size["frames"]
        t = {
            "latents": _randn(g, b, 4, f, lat, lat),
            "timestep": torch.randint(0, 1000, (1,), generator=g),
            "context": _randn(g, b, 1, ctx_dim),
            "audio_tokens": _randn(g, b, f, proj.context_tokens, proj.output_dim),
            "pose_features": _randn(g, b, f, cfg.unet.block_out_channels[0], lat, lat) * 0.1,
            "region_weights": torch.tensor([1.0, 1.0, 2.0]),
            "bank_keep": torch.arange(b) >= b // 2,  # CFG order: unconditional first
        }
        for k in range(MASK_LEVELS):
            side = lat >> k
            lips = torch.rand(b, f, side * side, generator=g)
            face = torch.rand(b, f, side * side, generator=g)
            t.update({f"mask_full_{k}": 1 + lips, f"mask_face_{k}": face, f"mask_lip_{k}": lips})
        for i, shape in enumerate(bank_shapes):
            t[f"bank_{i}"] = _randn(g, *shape).half()
        return t

    mask_dims = {f"mask_{br}_{k}": {0: batch, 1: frames}
                 for br in BRANCHES for k in range(MASK_LEVELS)}  # fmt: skip
    unet_dims = {"latents": {0: batch, 2: frames}, "context": {0: batch},
                 "audio_tokens": {0: batch, 1: frames}, "pose_features": {0: batch, 1: frames},
                 "bank_keep": {0: batch}, **mask_dims}  # fmt: skip

    def spec(name: str, make, dynamic: dict) -> NetworkSpec:  # noqa: ANN001
        module = steps[name].eval()
        return NetworkSpec(name, module, module.input_names, module.output_names, dynamic,
                           seeded(make))  # fmt: skip

    return [
        spec("pose_guider", pose_inputs, {"pose_images": {2: clip_frames}}),
        spec("audio_proj", proj_inputs, {"windows": {1: clip_frames}}),
        spec("vae_encoder", encode_inputs, {"image": {0: images}}),
        spec("vae_decoder", decode_inputs, {"latent": {0: images}}),
        spec("reference_net", reference_inputs, {}),
        spec("unet_step", unet_inputs, unet_dims),
    ]
