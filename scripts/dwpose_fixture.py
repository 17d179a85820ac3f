"""Write ``tests/fixtures/official/dwpose.npz``: the official DWPose code on stand-in models.

Manual, not part of the test suite. It runs the official MMGT repository's
``src/dwpose.DWposeDetector`` (detector, crop, SimCC decoding, neck and OpenPose order, the
``resize_image`` to 512 before detection) on the seeded stand-in ONNX files of
``tests/standin_models.py`` and records the keypoints it returns for a few images. The official
code and controlnet_aux are read from folders the caller names; nothing of them is copied::

    python scripts/dwpose_fixture.py --official /path/to/MMGT --controlnet-aux /path/to/pkg

``--official`` is a checkout of SIA-IDE/MMGT (the folder holding ``src/``); ``--controlnet-aux``
the folder holding the ``controlnet_aux`` package (only its ``util.py`` is imported: the
package's ``__init__`` needs many optional libraries).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "official" / "dwpose.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--controlnet-aux", type=Path, required=True)
    args = ap.parse_args()

    pkg = types.ModuleType("controlnet_aux")
    pkg.__path__ = [str(args.controlnet_aux / "controlnet_aux")]
    sys.modules["controlnet_aux"] = pkg
    util_file = args.controlnet_aux / "controlnet_aux" / "util.py"
    spec = importlib.util.spec_from_file_location("controlnet_aux.util", util_file)
    util = importlib.util.module_from_spec(spec)
    sys.modules["controlnet_aux.util"] = util
    spec.loader.exec_module(util)
    sys.path.insert(0, str(args.official.resolve()))
    sys.path.insert(0, str(ROOT))

    from tests.standin_models import fixture_images, write_models

    imgs = fixture_images()
    with tempfile.TemporaryDirectory() as tmp:
        models_hash = write_models(Path(tmp) / "pretrained_weights")
        os.chdir(tmp)  # the official code reads ./pretrained_weights/DWPose/*.onnx
        from src.dwpose import DWposeDetector

        detector = DWposeDetector().to("cpu")
        out: dict[str, np.ndarray] = {"models_sha256": np.array(models_hash)}
        for name, rgb in imgs.items():
            _, _, whole = detector(Image.fromarray(rgb))
            out[f"{name}/keypoints"] = np.asarray(whole, np.float64)  # (persons, 402)
            print(name, rgb.shape, "persons", whole.shape[0])
    np.savez_compressed(OUT, **out)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
