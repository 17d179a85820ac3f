"""DWPose reference poses: the official pipeline's own keypoint detector, from the user's files.

The official MMGT code makes every keypoint its models saw (training data and the reference pose
at inference) with DWPose: a YOLOX-L person detector (``DWPose/yolox_l.onnx``) and the RTMPose
whole-body model (``DWPose/dw-ll_ucoco_384.onnx``), both in ONNX Runtime. The released weights
folder ships them; when they are there, the engine uses them for the reference pose, so the
official SMGA and stage-2 models see the keypoint convention they were trained on (MediaPipe's
differs: shoulders, jaw line, scores). Nothing is downloaded: without the files the MediaPipe
extractor is used.

The steps and constants follow the official ``src/dwpose`` code (``onnxdet``, ``onnxpose``,
``wholebody`` and ``DWposeDetector``), checked against its outputs on stand-in models
(``tests/test_dwpose.py``):

1. the RGB photo → BGR, short side resized to 512 and both sides rounded to multiples of 64
   (Lanczos up, area down);
2. detection: letterbox into 640² (pad 114, top-left), YOLOX grid decoding (strides 8/16/32),
   score = objectness × class, class-wise NMS (IoU 0.45, score > 0.1), persons scoring > 0.3;
3. per person: the box padded 1.25×, widened to the model's 3:4 aspect, cropped by an affine
   warp to 288 × 384, normalised with ImageNet's RGB mean and std (applied to the BGR crop, as
   the official code does); with no person the whole image is the box;
4. SimCC decoding: argmax of the x and y distributions / 2, score = the smaller maximum;
   keypoints whose score is ≤ 0 are placed at (−1, −1) in the crop;
5. COCO-WholeBody 133 → the 134 layout: neck = mean of the shoulders (its score 1 if both
   shoulders score > 0.3, else 0), inserted at 17, the body reordered to OpenPose-18.

Scores are the raw SimCC maxima (they may exceed 1), as the official models saw them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np

from mmgt.errors import InputError, WeightsError

POSE_MODELS = ("auto", "mediapipe", "dwpose")
DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DETECT_RESOLUTION = 512  # the official resize_image(…, 512) before detection
DETECT_INPUT = (640, 640)  # YOLOX input (h, w)
LETTERBOX_PAD = 114
YOLOX_STRIDES = (8, 16, 32)
NMS_IOU = 0.45
CANDIDATE_SCORE = 0.1
PERSON_SCORE = 0.3
PERSON_CLASS = 0
BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT = 2.0
NECK_SCORE = 0.3
# COCO-WholeBody body (with the neck inserted at 17) → OpenPose-18 order (official wholebody.py).
_MMPOSE_BODY = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_OPENPOSE_BODY = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]


def find_dwpose(weights_dir: str | os.PathLike[str]) -> Path | None:
    """The ``DWPose`` folder of an official weights folder, if both ONNX files are in it."""
    folder = Path(weights_dir) / "DWPose"
    if (folder / DETECTOR_FILE).is_file() and (folder / POSE_FILE).is_file():
        return folder
    return None


def choose_dwpose(
    pose_model: str, weights_dir: str | os.PathLike[str] | None, *, official_models: bool
) -> Path | None:
    """The DWPose folder to extract reference poses with, or None for MediaPipe.

    ``auto`` takes DWPose when the official models run (``official_models``) and the weights
    folder holds it; ``dwpose`` insists on it; ``mediapipe`` never uses it.
    """
    if pose_model not in POSE_MODELS:
        raise InputError(
            f"unknown pose model {pose_model!r} (choose from {', '.join(POSE_MODELS)})"
        )
    if pose_model == "mediapipe":
        return None
    folder = find_dwpose(weights_dir) if weights_dir is not None else None
    if pose_model == "dwpose" and folder is None:
        where = f"{weights_dir}/DWPose" if weights_dir is not None else "--weights-dir/DWPose"
        raise InputError(f"--pose-model dwpose needs {DETECTOR_FILE} and {POSE_FILE} in {where}")
    return folder if (pose_model == "dwpose" or official_models) else None


# (input dims, output dims) of the released files; None = any size (a symbolic batch axis).
SIGNATURES = {
    DETECTOR_FILE: ([(None, 3, 640, 640)], [(None, 8400, 85)]),
    POSE_FILE: ([(None, 3, 384, 288)], [(None, 133, 576), (None, 133, 768)]),
}


def _dims(values, skip: set[str]) -> list[tuple[int | None, ...]]:  # noqa: ANN001
    """ONNX value infos → their dims (None where symbolic), leaving out initialisers."""
    shapes = [v.type.tensor_type.shape.dim for v in values if v.name not in skip]
    return [tuple(d.dim_value if d.HasField("dim_value") else None for d in s) for s in shapes]


def _same(got: list[tuple], want: list[tuple]) -> bool:
    """Equal dims after the first (batch) axis."""
    return len(got) == len(want) and all(
        len(g) == len(w) and g[1:] == w[1:] for g, w in zip(got, want, strict=True)
    )


def signature_problems(folder: str | os.PathLike[str]) -> list[str]:
    """How the two ONNX files' inputs and outputs differ from the released ones ([] = same)."""
    import onnx

    problems = []
    for name, (want_in, want_out) in SIGNATURES.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:  # noqa: BLE001 - any parse failure is reported, not raised
            problems.append(f"{name}: not a readable ONNX file ({exc})")
            continue
        weights = {t.name for t in graph.initializer}
        for what, got, want in (
            ("inputs", _dims(graph.input, weights), want_in),
            ("outputs", _dims(graph.output, weights), want_out),
        ):
            if not _same(got, want):
                problems.append(f"{name}: {what} {got}, expected {want} (first axis: any)")
    return problems


# -- pure maths (numpy / OpenCV) ------------------------------------------------------------
def resize_for_detection(bgr: np.ndarray, resolution: int = DETECT_RESOLUTION) -> np.ndarray:
    """Short side → ``resolution``, both sides rounded to multiples of 64 (official resize)."""
    h, w = bgr.shape[:2]
    k = float(resolution) / min(h, w)
    size = (int(np.round(w * k / 64.0)) * 64, int(np.round(h * k / 64.0)) * 64)  # (w, h)
    return cv2.resize(bgr, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def letterbox(bgr: np.ndarray, size: tuple[int, int] = DETECT_INPUT) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 → (3, h, w) float32 padded with 114 at the bottom/right, and the scale."""
    r = min(size[0] / bgr.shape[0], size[1] / bgr.shape[1])
    nw, nh = int(bgr.shape[1] * r), int(bgr.shape[0] * r)
    padded = np.full((size[0], size[1], 3), LETTERBOX_PAD, np.uint8)
    padded[:nh, :nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), r


def decode_yolox(pred: np.ndarray, size: tuple[int, int] = DETECT_INPUT) -> np.ndarray:
    """(A, 5 + C) raw YOLOX rows → (A, 5 + C) with (cx, cy, w, h) in input pixels."""
    grids, strides = [], []
    for s in YOLOX_STRIDES:
        xv, yv = np.meshgrid(np.arange(size[1] // s), np.arange(size[0] // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out = pred.copy()
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS (inclusive pixel areas, +1, as the official code); indices, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def person_boxes(pred: np.ndarray, ratio: float) -> np.ndarray:
    """Decoded YOLOX rows → (P, 4) person boxes (x0, y0, x1, y1) in image pixels, best first.

    The official NMS runs per class; only the person class is kept, so only it is computed.
    """
    scores = pred[:, 4] * pred[:, 5 + PERSON_CLASS]
    boxes = np.empty_like(pred[:, :4])
    boxes[:, :2] = pred[:, :2] - pred[:, 2:4] / 2.0
    boxes[:, 2:] = pred[:, :2] + pred[:, 2:4] / 2.0
    boxes /= ratio
    valid = scores > CANDIDATE_SCORE
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, NMS_IOU) if len(scores) else []
    # The official code compares and crops in float64 (its detections are concatenated with
    # float64 class indices); doing the same keeps the crops identical to the last bit.
    boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
    return boxes[scores > PERSON_SCORE]


def crop_transform(box: np.ndarray, input_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Box → (center, scale) of the model crop: padded 1.25×, widened to the input's aspect."""
    box = np.asarray(box)
    center = np.array([box[0] + box[2], box[1] + box[3]]) * 0.5
    w, h = (box[2] - box[0]) * BOX_PADDING, (box[3] - box[1]) * BOX_PADDING
    aspect = input_wh[0] / input_wh[1]
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def crop_matrix(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    """2 × 3 affine map from image pixels to the crop (three point pairs, no rotation)."""
    dst_w, dst_h = input_wh
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, -0.5 * scale[0]])
    dst[0] = (dst_w * 0.5, dst_h * 0.5)
    dst[1] = dst[0] + np.array([0.0, -0.5 * dst_w])
    for p in (src, dst):  # the third point: (p0 - p1) turned 90° about p1
        d = p[0] - p[1]
        p[2] = p[1] + np.array([-d[1], d[0]])
    return cv2.getAffineTransform(src, dst)


def crop_input(
    bgr: np.ndarray, center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]
) -> np.ndarray:
    """The person crop as the pose model's (1, 3, h, w) float32 input."""
    crop = cv2.warpAffine(
        bgr, crop_matrix(center, scale, input_wh), input_wh, flags=cv2.INTER_LINEAR
    )
    norm = (crop - PIXEL_MEAN) / PIXEL_STD  # (h, w, 3) float64; RGB statistics on BGR, as official
    return norm.transpose(2, 0, 1)[None].astype(np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, Wx), (K, Wy) → (K, 2) crop coordinates and (K,) scores."""
    locs = np.stack([simcc_x.argmax(1), simcc_y.argmax(1)], -1).astype(np.float32)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    locs[scores <= 0.0] = -1
    return locs / SIMCC_SPLIT, scores


def wholebody_to_layout(points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """COCO-WholeBody (133, 2) + (133,) → (134, 3) in the MMGT/OpenPose layout."""
    info = np.concatenate([points, scores[:, None]], axis=1)  # (133, 3)
    neck = info[[5, 6]].mean(axis=0)
    neck[2] = float(info[5, 2] > NECK_SCORE and info[6, 2] > NECK_SCORE)
    out = np.insert(info, 17, neck, axis=0)  # (134, 3)
    out[_OPENPOSE_BODY] = out[_MMPOSE_BODY]
    return out


# -- the models -------------------------------------------------------------------------------
class DWPose:
    """The two DWPose ONNX files in ONNX Runtime; call with an RGB photo.

    ``device`` ``cuda:N`` asks for the CUDA provider (as the official code does on a GPU).
    Calls are serialised by a lock, so one instance can be shared between threads.
    """

    def __init__(
        self, folder: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
    ) -> None:
        """``threads``: ONNX Runtime intra-op threads (default: all cores; it runs once per
        photo, not per frame)."""
        from mmgt.runtime import foreign_session

        folder = Path(folder)
        missing = [f for f in (DETECTOR_FILE, POSE_FILE) if not (folder / f).is_file()]
        if missing:
            raise InputError(f"{folder}: missing DWPose file(s) {', '.join(missing)}")
        self.folder = folder
        self._det, self._pose = (foreign_session(folder / name, device=device, threads=threads)
                                 for name in (DETECTOR_FILE, POSE_FILE))  # fmt: skip
        h, w = self._pose.get_inputs()[0].shape[2:]
        if not (isinstance(h, int) and isinstance(w, int)):
            raise WeightsError(f"{folder / POSE_FILE}: the input size must be fixed, got {h}×{w}")
        self.input_wh = (w, h)
        self._lock = threading.Lock()

    def people(self, rgb: np.ndarray) -> np.ndarray:
        """(P, 134, 3) keypoints of everyone found, in pixels of ``rgb``, the best first.

        With nobody detected the whole image is taken as one person, as in the official code.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape}")
        h, w = rgb.shape[:2]
        bgr = resize_for_detection(np.ascontiguousarray(rgb[..., ::-1]))
        with self._lock:
            people = [wholebody_to_layout(*self._keypoints(bgr, box)) for box in self._boxes(bgr)]
        out = np.stack(people)  # (P, 134, 3) in the resized image
        out[..., 0] *= w / bgr.shape[1]
        out[..., 1] *= h / bgr.shape[0]
        return out.astype(np.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(134, 3) keypoints of the first person found (the official reference pose)."""
        return self.people(rgb)[0]

    def _boxes(self, bgr: np.ndarray) -> np.ndarray:
        inp, ratio = letterbox(bgr)
        raw = self._det.run(None, {self._det.get_inputs()[0].name: inp[None]})[0][0]
        boxes = person_boxes(decode_yolox(raw), ratio)
        if not len(boxes):
            boxes = np.array([[0, 0, bgr.shape[1], bgr.shape[0]]])
        return boxes

    def _keypoints(self, bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        center, scale = crop_transform(box, self.input_wh)
        inp = crop_input(bgr, center, scale, self.input_wh)
        simcc_x, simcc_y = self._pose.run(None, {self._pose.get_inputs()[0].name: inp})
        locs, scores = decode_simcc(simcc_x[0], simcc_y[0])
        points = locs / np.asarray(self.input_wh) * scale + center - scale / 2
        return points, scores
