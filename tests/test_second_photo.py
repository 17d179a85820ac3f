"""A second real person: the whole offline path on a photo the project was not tuned on.

`tests/data/grace_hopper.jpg` (512 × 600, a public-domain U.S. Navy portrait that matplotlib
ships as sample data) is portrait-shaped, head and shoulders, with glasses and a cap. It is
framed, analysed and rendered speaking with the default driver (the shipped SMGA model).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from mmgt.audio import load_audio, write_wav
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.keypoints import layout
from mmgt.offline import render_video

PHOTO = Path(__file__).parent / "data" / "grace_hopper.jpg"
SIZE = 256
F = layout.face_index


@pytest.fixture(scope="module")
def avatar():
    return load_avatar(PHOTO, frame_size=SIZE)


def test_framing_and_face_geometry(avatar):
    assert avatar.image.shape == (SIZE, SIZE, 3)
    face = avatar.reference_pose[layout.FACE]
    assert (face[:, 2] > layout.VISIBILITY_THRESHOLD).all()
    xy = face[:, :2]
    assert (xy > 0).all() and (xy < SIZE).all()
    # Framing: the face is centred horizontally (the photo's width allows it) and its top sits
    # a fifth of the way down, up to the forehead margin the framing adds.
    assert abs(xy[:, 0].mean() - SIZE / 2) < 0.08 * SIZE
    p = avatar.reference_pose
    brows, eyes, nose, mouth = (p[F(np.arange(a, b)), 1].mean() for a, b in
                                ((17, 27), (36, 48), (27, 36), (48, 68)))  # fmt: skip
    assert brows < eyes < nose < mouth
    # The person's right eye is on the image's left.
    assert p[F(np.arange(36, 42)), 0].mean() < p[F(np.arange(42, 48)), 0].mean()
    # Shoulders are found below the face, one on each side of it.
    rs, ls = p[layout.R_SHOULDER], p[layout.L_SHOULDER]
    assert rs[2] > 0.5 and ls[2] > 0.5
    assert rs[1] > mouth and ls[1] > mouth and rs[0] < xy[:, 0].min() < xy[:, 0].max() < ls[0]


def _stabilised_change(
    frames: np.ndarray, photo: np.ndarray, box: tuple[slice, slice], search: int = 4
) -> np.ndarray:
    """Per frame, the mean change of the mouth box from the photo after following the head:
    each frame is shifted by the offset (within ±``search`` px) that best aligns the band above
    the lips (the base of the nose) with the photo, so head sway does not count as change."""
    ys, xs = box
    band = (slice(ys.start - (ys.stop - ys.start) // 2, ys.start), xs)
    out = []
    for f in frames.astype(np.float32):
        errors = {
            (dy, dx): (
                (
                    f[band[0].start + dy : band[0].stop + dy, xs.start + dx : xs.stop + dx]
                    - photo[band]
                )
                ** 2
            ).mean()  # fmt: skip
            for dy in range(-search, search + 1)
            for dx in range(-search, search + 1)
        }
        dy, dx = min(errors, key=errors.get)
        mouth = f[ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
        out.append(np.abs(mouth - photo[box]).mean())
    return np.array(out)


def test_renders_speaking_with_the_default_model(avatar, tmp_path):
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 16000 * 6]
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech, 16000)
    out = tmp_path / "hopper.mp4"
    result = render_video(wav, out, image=PHOTO, size=SIZE, progress=False)
    assert result.driver.startswith("smga") and out.is_file()
    with av.open(str(out)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(frames) == 150
    lips = avatar.reference_pose[layout.OUTER_LIPS, :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    w = x1 - x0
    box = (slice(int(y0 - 0.3 * w), int(y1 + 0.6 * w)), slice(int(x0 - 0.2 * w), int(x1 + 0.2 * w)))
    change = _stabilised_change(frames, avatar.image, box)
    envelope = np.sqrt((speech[: 150 * 640].reshape(150, 640) ** 2).mean(1))
    r = np.corrcoef(change, envelope)[0, 1]
    assert r > 0.5, f"mouth change vs speech envelope: r = {r:.2f}"
    # Away from the person (the top-left corner: the flag) the photo holds still, up to the
    # H.264 encoding: within 30 dB PSNR, as the foundation asks outside the masks.
    corner = frames[:, : SIZE // 8, : SIZE // 8].astype(np.float64)
    mse = ((corner - avatar.image[: SIZE // 8, : SIZE // 8]) ** 2).mean((1, 2, 3))
    assert (10 * np.log10(255.0**2 / mse)).min() > 30
