"""Benchmark of the reference-pose extractor: time per photo, and error against hand labels.

Run: ``python -m bench.bench_extractor``. Writes ``bench/results/extractor.json``. The labels are
``tests/data/astronaut_labels.json`` (bundled photo); the error is reported per labelled point
for the photo and its mirrored and rescaled variants (what ``tests/test_extractor.py`` checks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from bench._common import median_time, write_result
from mmgt.avatar import BUNDLED_AVATAR, load_image, prepare_avatar
from mmgt.keypoints import layout
from mmgt.keypoints.extractor import ReferencePoseExtractor

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "astronaut_labels.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    labels = json.loads(LABELS.read_text())
    photo = load_image(BUNDLED_AVATAR)
    t0 = time.perf_counter()
    ex = ReferencePoseExtractor()
    ex(photo)
    first_s = time.perf_counter() - t0
    warm = median_time(lambda: ex(photo), args.repeats)
    single = ReferencePoseExtractor(mirror=False)
    single(photo)
    no_mirror = median_time(lambda: single(photo), args.repeats)

    variants = {
        "original": (photo, False),
        "flipped": (np.ascontiguousarray(photo[:, ::-1]), True),
        "upscaled_2x": (cv2.resize(photo, (1024, 1024), interpolation=cv2.INTER_CUBIC), False),
        "downscaled_0.75x": (cv2.resize(photo, (384, 384), interpolation=cv2.INTER_AREA), False),
    }
    errors: dict[str, dict[str, float]] = {}
    for name, (img, flip) in variants.items():
        pts = prepare_avatar(img, extractor=ex).reference_pose
        errors[name] = {}
        for group in ("face", "shoulders"):
            for key, item in labels[group].items():
                idx, xy = int(key), np.array(item["xy"])
                if flip:
                    idx, xy = int(layout.MIRROR_PERMUTATION[idx]), np.array([512 - xy[0], xy[1]])
                errors[name][item["name"]] = round(float(np.linalg.norm(pts[idx, :2] - xy)), 2)
    results = {
        "first_call_s": round(first_s, 3),
        "per_photo_ms": round(1000 * warm["median_s"], 1),
        "per_photo_without_mirroring_ms": round(1000 * no_mirror["median_s"], 1),
        "label_error_px": errors,
        "max_face_error_px": max(
            v for e in errors.values() for k, v in e.items() if "shoulder" not in k
        ),
        "max_shoulder_error_px": max(
            v for e in errors.values() for k, v in e.items() if "shoulder" in k
        ),
        "targets": {"label_error_px_max": 6.0},
    }
    print(write_result("extractor", results))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
