"""The WebRTC video path's cheaper encoding (server/rtc_video.py): the same picture as
aiortc's own conversion and encoder would give, or a better one, and aiortc's behaviour kept
(keyframe requests, bitrate changes, the other codecs)."""

from __future__ import annotations

import fractions

import aiortc.rtcrtpsender
import aiortc.rtp
import av
import cv2
import numpy as np
import pytest
from aiortc.codecs import H264Encoder, OpusEncoder
from aiortc.codecs import vpx as aiortc_vpx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from mmgt.avatar import BUNDLED_AVATAR
from server.rtc_video import (
    Vp8Encoder,
    audio_level_dbov,
    tune_aiortc,
    tuned_encoder,
    yuv_frame,
)

SIZE = 256


def _photo() -> np.ndarray:
    with av.open(str(BUNDLED_AVATAR)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _clip(n: int = 40) -> list[np.ndarray]:
    """The photo swaying by fractions of a pixel, as a talking avatar's frames do."""
    photo = _photo()
    frames = []
    for i in range(n):
        shift = np.float32([[1, 0, 0.8 * np.sin(i / 3)], [0, 1, 0.5 * np.sin(i / 5)]])
        frames.append(cv2.warpAffine(photo, shift, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT))
    return frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def _round_trip(encoder, images: list[np.ndarray], convert) -> tuple[list[float], list[bytes]]:
    """Encode with ``encoder`` (frames made by ``convert``), depacketise and decode: the PSNR
    of each decoded frame and each frame's first payload."""
    decoder = aiortc_vpx.Vp8Decoder()
    scores, firsts = [], []
    for i, image in enumerate(images):
        frame = convert(image)
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=(i == len(images) - 1))
        firsts.append(payloads[0])
        data = b"".join(aiortc_vpx.VpxPayloadDescriptor.parse(p)[1] for p in payloads)
        (decoded,) = decoder.codec.decode(av.Packet(data))
        scores.append(_psnr(decoded.to_ndarray(format="rgb24"), image))
    return scores, firsts


def test_yuv_conversion_matches_libswscale():
    image = _photo()
    ours = yuv_frame(image)
    ref = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    assert ours.format.name == "yuv420p" and (ours.width, ours.height) == (SIZE, SIZE)
    diff = np.abs(ours.to_ndarray().astype(int) - ref.to_ndarray().astype(int))
    assert diff.mean() < 0.5  # the same matrix and range; chroma rounding differs slightly
    back = ours.to_ndarray(format="rgb24")
    assert _psnr(back, image) > 30


def test_the_tuned_encoder_gives_a_better_picture_at_the_same_bitrate():
    images = _clip()
    rgb = lambda image: av.VideoFrame.from_ndarray(image, format="rgb24")  # noqa: E731
    ours, firsts = _round_trip(Vp8Encoder(), images, rgb)  # converts with yuv_frame
    theirs, _ = _round_trip(aiortc_vpx.Vp8Encoder(), images, rgb)  # with libswscale
    assert np.mean(ours[1:]) > np.mean(theirs[1:]) + 0.5
    # A keyframe request is honoured (VP8 payload header: bit 0 of the frame tag is 0).
    key = [not (aiortc_vpx.VpxPayloadDescriptor.parse(p)[1][0] & 1) for p in firsts]
    assert key == [True] + [False] * (len(images) - 2) + [True]


def test_a_new_target_bitrate_reopens_the_codec_with_the_tuned_options(monkeypatch):
    opened = []
    open_codec = Vp8Encoder._open_codec

    def spy(self, width, height):
        opened.append(codec := open_codec(self, width, height))
        return codec

    monkeypatch.setattr(Vp8Encoder, "_open_codec", spy)
    encoder = Vp8Encoder()
    frame = yuv_frame(_photo())
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    encoder.encode(frame)
    assert opened == [encoder.codec] and encoder.codec.bit_rate == encoder.target_bitrate
    encoder.target_bitrate = int(encoder.target_bitrate * 1.05)  # within 10 %: kept
    encoder.encode(frame)
    assert len(opened) == 1
    encoder.target_bitrate = 1_200_000  # aiortc would reopen its own: ours is reopened
    encoder.encode(frame)
    assert opened[1:] == [encoder.codec] and encoder.codec.bit_rate == 1_200_000


@pytest.mark.parametrize(
    ("mime", "clock", "kind"),
    [
        ("video/VP8", 90000, Vp8Encoder),
        ("video/H264", 90000, H264Encoder),
        ("audio/opus", 48000, OpusEncoder),
    ],  # fmt: skip
)
def test_senders_pick_the_tuned_encoder_for_vp8_only(monkeypatch, mime, clock, kind):
    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", aiortc.rtcrtpsender.get_encoder)
    monkeypatch.setattr(aiortc.rtp, "compute_audio_level_dbov", aiortc.rtp.compute_audio_level_dbov)
    tune_aiortc()
    params = RTCRtpCodecParameters(
        mimeType=mime, clockRate=clock, channels=2 if clock == 48000 else None
    )
    assert aiortc.rtcrtpsender.get_encoder is tuned_encoder
    assert type(tuned_encoder(params)) is kind


def test_the_audio_level_equals_aiortcs(monkeypatch):
    """RFC 6465 levels from NumPy, equal to aiortc's Python loop, from silence to full scale
    (what tune_aiortc puts in its place)."""
    monkeypatch.setattr(aiortc.rtp, "compute_audio_level_dbov", aiortc.rtp.compute_audio_level_dbov)
    reference = aiortc.rtp.compute_audio_level_dbov
    rng = np.random.default_rng(0)
    levels = set()
    for amplitude in (0, 1, 3, 30, 300, 3000, 20000, 32767):
        pcm = np.clip(rng.normal(0, amplitude, 960), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        assert audio_level_dbov(frame) == reference(frame)
        levels.add(audio_level_dbov(frame))
    assert min(levels) == -127 and max(levels) > -5  # the whole range was covered
    tune_aiortc()
    assert aiortc.rtp.compute_audio_level_dbov is audio_level_dbov
