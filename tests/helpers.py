"""Shared test helpers (no fixtures here, so any test module can import them)."""

from __future__ import annotations

import numpy as np
import torch

from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, preset


def synthetic_reference_pose() -> np.ndarray:
    """A synthetic frontal upper-body pose (512 frame) with closed lips."""
    rng = np.random.default_rng(3)
    pts = np.zeros((134, 3), np.float32)
    pts[:, 2] = 0.9
    body = {
        0: (256, 150),
        1: (256, 260),
        2: (170, 262),
        3: (140, 380),
        4: (150, 480),
        5: (342, 262),
        6: (372, 380),
        7: (362, 480),
        14: (240, 130),
        15: (272, 130),
        16: (222, 135),
        17: (290, 135),
    }
    for k, xy in body.items():
        pts[k, :2] = xy
    pts[layout.LEGS, 2] = 0
    pts[8:14, 2] = 0
    pts[layout.FEET, 2] = 0
    # Face: jaw arc, brows, nose, eyes, lips around (256, 150).
    f = layout.face_index
    ang = np.linspace(np.pi, 0, 17)
    pts[f(np.arange(17)), :2] = np.stack([256 - 48 * np.cos(ang), 140 + 55 * np.sin(ang)], 1)
    pts[f(np.arange(17, 27)), :2] = np.stack(
        [np.r_[np.linspace(215, 245, 5), np.linspace(267, 297, 5)], np.full(10, 112)], 1
    )
    pts[f(np.arange(27, 36)), :2] = [
        (256, 120),
        (256, 128),
        (256, 136),
        (256, 144),
        (246, 150),
        (251, 152),
        (256, 153),
        (261, 152),
        (266, 150),
    ]
    for base, cx in ((36, 238), (42, 274)):
        pts[f(np.arange(base, base + 6)), :2] = [
            (cx - 9, 125),
            (cx - 3, 121),
            (cx + 3, 121),
            (cx + 9, 125),
            (cx + 3, 128),
            (cx - 3, 128),
        ]
    lips_outer = [
        (236, 170),
        (242, 166),
        (250, 164),
        (256, 165),
        (262, 164),
        (270, 166),
        (276, 170),
        (270, 176),
        (262, 178),
        (256, 179),
        (250, 178),
        (242, 176),
    ]
    lips_inner = [
        (240, 170),
        (250, 169),
        (256, 170),
        (262, 169),
        (272, 170),
        (262, 171),
        (256, 171),
        (250, 171),
    ]
    pts[f(np.arange(48, 60)), :2] = lips_outer
    pts[f(np.arange(60, 68)), :2] = lips_inner
    pts[layout.HANDS, :2] = rng.uniform(100, 400, (42, 2))
    pts[layout.HANDS, 2] = 0.0  # hands not visible
    return pts


def write_tiny_official_folder(root, seed: int = 5):  # noqa: ANN001, ANN201 - Path → models
    """An official weights folder (docs/weights.md layout) holding the random tiny stage-2
    models: VAE, image encoder and wav2vec2 as pretrained folders, the SD UNet config, and
    ``stage_2/net-7.pth`` as the official trainer saves it. Returns the models written."""
    import json

    import torch

    from mmgt.weights.stage2 import IMAGE_ENCODER_DIR, SD_UNET_CONFIG, VAE_DIR, WAV2VEC_DIR
    from mmgt.weights.stage2_models import Stage2Models

    models = Stage2Models.random("tiny", seed=seed)
    models.vae.save_pretrained(root / VAE_DIR)
    models.image_encoder.save_pretrained(root / IMAGE_ENCODER_DIR)
    models.wav2vec.save_pretrained(root / WAV2VEC_DIR)
    (root / SD_UNET_CONFIG).parent.mkdir(parents=True)
    (root / SD_UNET_CONFIG).write_text(json.dumps(models.config.unet.reference_config()))
    (root / "stage_2").mkdir()
    torch.save(models.net.state_dict(), root / "stage_2" / "net-7.pth")
    return models


TRT_NETWORKS = ("smga_step", "pose_guider", "audio_proj", "vae_decoder")  # trt_onnx's


def tiny_smga(seed: int) -> SMGA:
    """A seeded tiny SMGA without dropout (the export tests' background exports are of these)."""
    torch.manual_seed(seed)
    return SMGA(preset("tiny", dropout=0.0)).eval()
