"""The 134-keypoint whole-body layout of MMGT/DWPose and its official normalisation.

Layout (index → part), identical to the official code (mmgt_official §2.2):

* 0–17   OpenPose-18 body: nose, neck, R-shoulder, R-elbow, R-wrist, L-shoulder, L-elbow,
         L-wrist, R-hip, R-knee, R-ankle, L-hip, L-knee, L-ankle, R-eye, L-eye, R-ear, L-ear
* 18–23  feet (COCO-WholeBody order): L big toe, L small toe, L heel, R big toe, R small toe, R heel
* 24–91  face, 68 iBUG landmarks (24–40 jaw, 41–50 brows, 51–59 nose, 60–71 eyes, 72–91 lips)
* 92–112 left hand (21, OpenPose hand order), 113–133 right hand

"Left" and "right" are the person's own sides. Each keypoint carries (x, y, score); the official
402-vector is keypoint-major: index k → dims 3k, 3k+1, 3k+2.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 134
NUM_CHANNELS = 3
OFFICIAL_DIM = NUM_KEYPOINTS * NUM_CHANNELS  # 402
OFFICIAL_FRAME = 512  # the official pixel frame the normalisation assumes
VISIBILITY_THRESHOLD = 0.3  # official: body joint drawn iff score > 0.3, others hidden iff < 0.3

# --- body (OpenPose-18) -------------------------------------------------------------------
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17

BODY = np.arange(0, 18)
FEET = np.arange(18, 24)
FACE_START = 24
FACE = np.arange(24, 92)
LEFT_HAND = np.arange(92, 113)
RIGHT_HAND = np.arange(113, 134)
HANDS = np.arange(92, 134)
LEGS = np.array([R_KNEE, R_ANKLE, L_KNEE, L_ANKLE])  # official mask_leg
ARMS = np.array([R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST])

# Arm segments for the limb mask (the paper's limb mask, built from arm and shoulder keypoints).
LIMB_SEGMENTS = (
    (R_SHOULDER, L_SHOULDER),
    (R_SHOULDER, R_ELBOW),
    (R_ELBOW, R_WRIST),
    (L_SHOULDER, L_ELBOW),
    (L_ELBOW, L_WRIST),
)


def face_index(ibug: int | np.ndarray) -> int | np.ndarray:
    """Map an iBUG-68 index (0–67) to its index in the 134 layout."""
    return FACE_START + ibug


# iBUG-68 groups, as 134-layout indices.
JAW = face_index(np.arange(0, 17))
RIGHT_BROW = face_index(np.arange(17, 22))
LEFT_BROW = face_index(np.arange(22, 27))
BROWS = face_index(np.arange(17, 27))
NOSE_BRIDGE = face_index(np.arange(27, 31))
NOSE_BOTTOM = face_index(np.arange(31, 36))
RIGHT_EYE = face_index(np.arange(36, 42))  # 36 outer corner, 37-38 upper lid, 39 inner, 40-41 lower
LEFT_EYE = face_index(np.arange(42, 48))  # 42 inner corner, 43-44 upper lid, 45 outer, 46-47 lower
EYES = face_index(np.arange(36, 48))
OUTER_LIPS = face_index(np.arange(48, 60))  # 48 right corner … 54 left corner … 57 bottom centre
INNER_LIPS = face_index(
    np.arange(60, 68)
)  # 60 right corner, 61-63 upper, 64 left corner, 65-67 lower
LIPS = face_index(np.arange(48, 68))  # official lips range 72–91

# Named index sets used by masks, drivers and renderers.
INDEX_SETS: dict[str, np.ndarray] = {
    "body": BODY,
    "feet": FEET,
    "face": FACE,
    "lips": LIPS,
    "eyes": EYES,
    "brows": BROWS,
    "jaw": JAW,
    "left_hand": LEFT_HAND,
    "right_hand": RIGHT_HAND,
    "hands": HANDS,
    "arms": ARMS,
    "legs": LEGS,
}

# OpenPose body limbs drawn by the official renderer: 17 pairs (0-based), in colour order.
BODY_LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)
# 21-point hand skeleton: 20 edges (wrist → each finger).
HAND_EDGES = tuple((0 if j == 0 else 4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(4))

# Face/body split of the 402 channels (SMGA's M^f / M^b): face = keypoints 24–91, all 3 channels.
FACE_CHANNEL_MASK = np.zeros(OFFICIAL_DIM, dtype=bool)
FACE_CHANNEL_MASK[3 * 24 : 3 * 92] = True


def normalize(points_px: np.ndarray, frame_size: int = OFFICIAL_FRAME) -> np.ndarray:
    """Official normalisation ``n = v/500 − 0.6`` of (…, 134, 3) pixel keypoints → (…, 402).

    Coordinates in a ``frame_size`` square are first rescaled to the official 512 frame. As in
    the official code the score channel is normalised too (score s → s/500 − 0.6).
    """
    pts = np.asarray(points_px, dtype=np.float64)
    if pts.shape[-2:] != (NUM_KEYPOINTS, NUM_CHANNELS):
        raise ValueError(f"expected (..., 134, 3) keypoints, got {pts.shape}")
    pts = pts.copy()
    pts[..., :2] *= OFFICIAL_FRAME / frame_size
    flat = pts.reshape(*pts.shape[:-2], OFFICIAL_DIM)
    return (((flat + 200.0) / 1000.0) * 2.0 - 1.0).astype(np.float32)


def denormalize(normalized: np.ndarray, frame_size: int = OFFICIAL_FRAME) -> np.ndarray:
    """Inverse of :func:`normalize`: (…, 402) → (…, 134, 3) pixels in a ``frame_size`` square.

    Computed in float32 in the official operation order ``((n + 1) / 2) * 1000 + (−200)``, which
    reproduces the official renderer input bitwise.
    """
    n = np.asarray(normalized, dtype=np.float32)
    if n.shape[-1] != OFFICIAL_DIM:
        raise ValueError(f"expected (..., 402) normalised keypoints, got {n.shape}")
    v = (n + np.float32(1)) / np.float32(2) * np.float32(1000) + np.float32(-200)
    pts = v.reshape(*n.shape[:-1], NUM_KEYPOINTS, NUM_CHANNELS)
    if frame_size != OFFICIAL_FRAME:
        pts = pts.copy()
        pts[..., :2] *= np.float32(frame_size / OFFICIAL_FRAME)
    return pts


def mask_legs(points: np.ndarray, *, normalized: bool = False) -> np.ndarray:
    """Official ``mask_leg``: zero knees and ankles (all three channels).

    Works on (…, 134, 3) keypoints or (…, 402) normalised vectors. In pixel space a zero score
    hides the joint; in normalised space the official code also writes 0.0.
    """
    out = np.array(points, copy=True)
    if normalized:
        view = out.reshape(*out.shape[:-1], NUM_KEYPOINTS, NUM_CHANNELS)
    else:
        view = out
    view[..., LEGS, :] = 0
    return out


def to_pixels(points: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Rescale (…, 134, 3) keypoints between square frames; scores are unchanged."""
    out = np.array(points, dtype=np.float32, copy=True)
    out[..., :2] *= to_size / from_size
    return out


def _mirror_permutation() -> np.ndarray:
    """Index permutation that swaps the person's left and right sides."""
    perm = np.arange(NUM_KEYPOINTS)

    def swap(a: np.ndarray | list[int], b: np.ndarray | list[int]) -> None:
        a, b = np.asarray(a), np.asarray(b)
        perm[a], perm[b] = b, a

    swap([2, 3, 4, 8, 9, 10, 14, 16], [5, 6, 7, 11, 12, 13, 15, 17])  # body
    swap([18, 19, 20], [21, 22, 23])  # feet
    swap(LEFT_HAND, RIGHT_HAND)
    ibug_pairs = (
        [(i, 16 - i) for i in range(8)]  # jaw
        + [(17 + i, 26 - i) for i in range(5)]  # brows
        + [(31, 35), (32, 34)]  # nose bottom
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
        + [(60, 64), (61, 63), (65, 67)]  # inner lips
    )
    a, b = zip(*ibug_pairs, strict=True)
    swap(face_index(np.array(a)), face_index(np.array(b)))
    return perm


MIRROR_PERMUTATION = _mirror_permutation()


def mirror(points: np.ndarray, width: float) -> np.ndarray:
    """Keypoints of the horizontally mirrored image: x → width − x, left and right swapped.

    Coordinates follow the continuous convention (pixel i spans [i, i + 1)), so mirroring twice
    is the identity.
    """
    out = np.array(points, dtype=np.float32, copy=True)[..., MIRROR_PERMUTATION, :]
    out[..., 0] = width - out[..., 0]
    return out
