"""The SMGA driver: audio features → keypoints with the stage-1 diffusion transformer.

Long clips and streams are generated in overlapping windows of the model's length W: each new
window's first C frames (``context``) are the last frames already emitted, fixed by the
sampler's continuation (:func:`mmgt.schedulers.pose.ddim_sample` with ``known``); a window
adds W − C new frames. With few steps the model barely sees that context through the noise,
so the new frames are also moved onto the committed ones, the move faded out over
``join_fade`` frames (:func:`join_offsets`), and windows join without jumps. The network
works in the official normalisation (v/500 − 0.6 of a 512 frame); poses come back in the
caller's frame size.

With ``ambient`` motion (the default for the models trained here, off for official
checkpoints), seeded blinks, head sway and breathing (:mod:`mmgt.drivers.ambient`) are laid
over the model's output: a few-step sampler averages them away. They are taken off the committed
frames before those become the next window's context, so the model only sees its own motion.
Likewise the output's lower lip and jaw are corrected for the model's closed-mouth bias,
measured once per avatar on silence, and the correction is taken off committed frames again
(``correct_lip_bias``, the default for models trained here; :mod:`mmgt.drivers.lip_bias`).

For official checkpoints the reference pose the model is conditioned on has its knees and ankles
zeroed in the normalised space, as the official audio2vid does (``mask_leg``).

The official model predicts the score channel too, but its normalised range is only 0.002 wide
(mmgt_official §8 item 23), so by default the output keeps the reference pose's scores.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmgt.drivers import lip_bias, pose_space
from mmgt.drivers.ambient import AmbientMotion
from mmgt.errors import InputError
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, guided
from mmgt.runtime import Runner
from mmgt.schedulers import check_sampling
from mmgt.schedulers.pose import CosineSchedule, ddim_sample
from mmgt.types import AudioFeatures, KeypointSeq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSettings:
    """DDIM settings. Official: 50 steps, η = 1, guidance 2; the shipped model runs 4 steps
    offline and 1 per live window."""

    steps: int = 50
    eta: float = 1.0
    guidance: float = 2.0
    context: int = 8  # frames of each window fixed to frames already emitted
    join_fade: int = 4  # frames a window's miss at the join is faded over (0: off; join_offsets)
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling("SMGA", self.steps, self.guidance, self.eta)
        if self.context < 0:
            raise InputError(f"SMGA context must be ≥ 0 frames, got {self.context}")
        if self.join_fade < 0:
            raise InputError(f"SMGA join fade must be ≥ 0 frames, got {self.join_fade}")


# The channels join_offsets moves: x and y of every point but the mouth's.
_JOINED = (np.arange(layout.OFFICIAL_DIM) % layout.NUM_CHANNELS < 2) & ~pose_space.MOUTH_XY


def join_offsets(miss: np.ndarray, frames: int, fade: int) -> np.ndarray:
    """(frames, 402) offsets for a window's new frames that take it onto the committed ones.

    ``miss`` (402,) is the last committed frame minus the model's own x̂0 for that frame. With
    few steps the committed context is barely visible through the noise (one step: not at
    all), so a window's new frames continue the model's idea of the context rather than the
    frames really emitted, and every join jumped (live: 3× the lips' acceleration inside a
    window). The miss is faded out linearly over ``fade`` frames, which keeps the join free of
    acceleration too. Scores and the mouth are left alone: the mouth's miss at a join is mostly
    the new audio's mouth, and fading it made lip sync later (live lip r 0.80 instead of 0.83).
    """
    weights = np.clip(1 - np.arange(1, frames + 1) / (fade + 1), 0.0, None)  # (frames,)
    offset = np.where(np.isfinite(miss) & _JOINED, miss, 0.0).astype(np.float32)
    return weights[:, None].astype(np.float32) * offset


class SMGADriver:
    """Windowed SMGA sampling behind the ``Driver`` protocol."""

    name = "smga"

    def __init__(
        self,
        model: SMGA,
        *,
        feature_kind: str,
        settings: SamplerSettings | None = None,
        audio_mean: np.ndarray | None = None,
        audio_std: np.ndarray | None = None,
        pose_std: np.ndarray | None = None,
        residual_anchor: str = "reference",
        keep_reference_scores: bool = True,
        step: Runner | None = None,
        ambient: AmbientMotion | None = None,
        mask_reference_legs: bool = False,
        speech_gate: bool = False,
        correct_lip_bias: bool = False,
    ) -> None:
        """``mask_reference_legs``: zero the knees and ankles of the normalised reference pose
        the model is conditioned on, as the official audio2vid does (``mask_leg``).
        ``speech_gate``: whoever computes this driver's features passes them through
        :class:`mmgt.audio.gate.SpeechGate` first (light features only).
        ``correct_lip_bias``: measure each avatar's silent mouth once and take the model's
        closed-mouth bias off (:mod:`mmgt.drivers.lip_bias`; light features only).
        ``residual_anchor``: what the model's residual motion is measured from
        (:data:`mmgt.drivers.pose_space.ANCHORS`, stored in its weights)."""
        if speech_gate and feature_kind != "light-v1":
            raise InputError(f"the speech gate works on light-v1 features, not {feature_kind}")
        self.speech_gate = speech_gate
        if correct_lip_bias and feature_kind != "light-v1":
            raise InputError(f"the lip-bias correction needs light-v1 features, not {feature_kind}")
        self.correct_lip_bias = correct_lip_bias
        self._lip_bias: OrderedDict[bytes, float] = OrderedDict()  # reference → mouth widths
        self._lip_lock = threading.Lock()
        self.model = model.eval()
        self.mask_reference_legs = mask_reference_legs
        self.ambient = ambient
        self.step = step  # the denoiser on another backend (same names as export.specs)
        self.feature_kind = feature_kind
        self.settings = settings or SamplerSettings()
        # Called with (frames done, frames in all) as generate() goes, e.g. by a progress bar.
        self.on_progress: Callable[[int, int], None] | None = None
        if not 0 <= self.settings.context < model.config.frames:
            raise InputError(
                f"SMGA context must be in 0..{model.config.frames - 1} frames (the model's window "
                f"is {model.config.frames}), got {self.settings.context}"
            )
        self.context_frames = self.settings.context
        self.schedule = CosineSchedule()
        dim = model.config.audio_dim
        self.audio_mean = np.zeros(dim, np.float32) if audio_mean is None else audio_mean
        self.audio_std = np.ones(dim, np.float32) if audio_std is None else audio_std
        self.keep_reference_scores = keep_reference_scores
        self.pose_std = pose_std  # None: official space; else the residual space (pose_space)
        if residual_anchor not in pose_space.ANCHORS:
            raise InputError(f"unknown residual anchor {residual_anchor!r} in the SMGA weights; "
                             f"this engine knows {', '.join(pose_space.ANCHORS)}")  # fmt: skip
        self.residual_anchor = residual_anchor  # what the residuals are measured from
        # The last reference's anchor pose (~0.7 ms to build, needed twice a window): one entry,
        # as each session's copy of the driver serves one avatar.
        self._anchor_memo: tuple[bytes, np.ndarray] | None = None
        self.nonfinite_values = 0  # model outputs replaced because they were NaN or infinite

    @property
    def window(self) -> int:
        return self.model.config.frames

    def generate(
        self,
        features: AudioFeatures,
        reference_pose: np.ndarray,
        committed: KeypointSeq | None = None,
        *,
        frame_size: int = layout.OFFICIAL_FRAME,
    ) -> KeypointSeq:
        """Keypoints for the frames of ``features`` after ``committed`` (``Driver`` protocol)."""
        if features.kind != self.feature_kind:
            raise ValueError(
                f"this SMGA model needs {self.feature_kind} features, got {features.kind}"
            )
        if features.values.shape[1] != self.model.config.audio_dim:
            raise ValueError(
                f"expected {self.model.config.audio_dim}-d features, got {features.values.shape[1]}"
            )
        ref = np.asarray(reference_pose, dtype=np.float32)
        if ref.shape != (layout.NUM_KEYPOINTS, 3):
            raise ValueError(f"reference_pose must be (134, 3), got {ref.shape}")
        bias = self.lip_bias(ref, frame_size) if self.correct_lip_bias else 0.0
        return self._generate(features, ref, committed, frame_size, bias, self.on_progress)

    def lip_bias(self, reference_pose: np.ndarray, frame_size: int) -> float:
        """The correction (mouth widths) this model's silent mouth needs on this reference,
        measured on the first call and remembered (:mod:`mmgt.drivers.lip_bias`)."""
        ref_norm = layout.normalize(np.asarray(reference_pose, np.float32), frame_size)
        key = np.round(ref_norm, 4).tobytes()
        with self._lip_lock:  # sessions share the cache (copies of one driver)
            if key in self._lip_bias:
                self._lip_bias.move_to_end(key)
                return self._lip_bias[key]
        quiet = lip_bias.silence(self.feature_kind, self.speech_gate)
        ref = layout.denormalize(ref_norm, layout.OFFICIAL_FRAME)
        value = lip_bias.correction(
            self._generate(quiet, ref, None, layout.OFFICIAL_FRAME, 0.0).points, ref
        )
        with self._lip_lock:
            self._lip_bias[key] = value
            while len(self._lip_bias) > lip_bias.CACHE_SIZE:
                self._lip_bias.popitem(last=False)
        return value

    def _generate(
        self,
        features: AudioFeatures,
        ref: np.ndarray,
        committed: KeypointSeq | None,
        frame_size: int,
        bias: float,
        report: Callable[[int, int], None] | None = None,
    ) -> KeypointSeq:
        done = 0
        out = np.zeros((len(features), layout.OFFICIAL_DIM), np.float32)
        if committed is not None:
            if committed.start_frame != features.start_frame:
                raise ValueError("committed frames must start where the feature window starts")
            done = len(committed)
            prev = committed.resized(frame_size)
            points = prev.points.copy()
            if self.ambient is not None:
                self.ambient.apply(points, ref, prev.start_frame, features.fps, undo=True)
            lip_bias.apply(points, ref, bias, undo=True)
            out[:done] = layout.normalize(points, frame_size)
        audio = (features.values - self.audio_mean) / self.audio_std
        ref_norm = layout.normalize(ref, frame_size)  # (402,)
        cond_norm = (
            layout.mask_legs(ref_norm, normalized=True) if self.mask_reference_legs else ref_norm
        )
        cond = torch.from_numpy(cond_norm)[None]  # (1, 402)
        if self.pose_std is not None:
            anchor = self._anchor(ref_norm)
            out = pose_space.to_residual(out, ref_norm, self.pose_std, anchor)
        while done < len(features):
            c = min(self.settings.context, done)
            start = done - c
            stop = min(start + self.window, len(features))
            known = torch.from_numpy(out[start:done])[None] if c else None
            first = features.start_frame + start
            window, guess = self._sample(audio[start:stop], cond, known, first)  # (T, 402) each
            if c:
                window[c:] += join_offsets(window[c - 1] - guess[c - 1], stop - done,
                                           self.settings.join_fade)  # fmt: skip
            out[done:stop] = self._finite(window[c:], out[done - 1] if done else None, ref_norm)
            done = stop
            if report is not None:
                report(done, len(features))
        if self.pose_std is not None:
            out = pose_space.from_residual(out, ref_norm, self.pose_std, anchor)
        skip = len(committed) if committed else 0
        poses = layout.denormalize(out[skip:], frame_size)
        lip_bias.apply(poses, ref, bias)
        if self.ambient is not None:
            self.ambient.apply(poses, ref, features.start_frame + skip, features.fps)
        if self.keep_reference_scores:
            poses[..., 2] = ref[:, 2]
        return KeypointSeq(poses.copy(), frame_size, features.fps, features.start_frame + skip)

    def _anchor(self, ref_norm: np.ndarray) -> np.ndarray:
        """(402,) the pose this model's residuals are measured from, for ``ref_norm``."""
        key = ref_norm.tobytes()
        memo = self._anchor_memo
        if memo is None or memo[0] != key:
            memo = (key, pose_space.anchor_of(ref_norm, self.residual_anchor))
            self._anchor_memo = memo
        return memo[1]

    def _finite(self, new: np.ndarray, last: np.ndarray | None, ref_norm: np.ndarray) -> np.ndarray:
        """``new`` (T, 402) with non-finite values (e.g. an fp16 overflow in the model) replaced
        by the frame before (or the reference pose), so one bad window neither crashes a live
        session nor draws garbage; counted in :attr:`nonfinite_values` and logged."""
        bad = ~np.isfinite(new)
        if not bad.any():
            return new
        if last is None:
            last = np.zeros_like(ref_norm) if self.pose_std is not None else ref_norm
        self.nonfinite_values += int(bad.sum())
        log.warning(
            "SMGA produced %d non-finite keypoint values; they hold the previous pose",
            int(bad.sum()),
        )
        fixed = new.copy()
        for t in range(len(fixed)):  # forward fill: each bad value takes the frame before's
            fixed[t, bad[t]] = last[bad[t]]
            last = fixed[t]
        return fixed

    @torch.no_grad()
    def _sample(
        self, audio: np.ndarray, cond: torch.Tensor, known: torch.Tensor | None, first: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sampled window and the model's last x̂0 of it (the context not put back)."""
        s = self.settings
        a = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]  # (1, T, A)
        gen = torch.Generator().manual_seed((s.seed * 1_000_003 + first) & 0x7FFFFFFF)

        last: list[torch.Tensor] = []  # the model's latest x̂0, before the context is put back

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if s.guidance == 1.0:
                out = self._forward(x, cond, a, t)
            else:
                out = guided(self._forward, x, cond, a, t, s.guidance)
            last[:] = [out]
            return out

        shape = (1, a.shape[1], layout.OFFICIAL_DIM)
        x = ddim_sample(
            denoise,
            self.schedule,
            shape,
            steps=s.steps,
            eta=s.eta,
            known=known,
            clip=self.pose_std is None,  # residual values are not bounded to [−1, 1]
            generator=gen,
        )
        guess = last[0][0].clamp(-1.0, 1.0) if self.pose_std is None else last[0][0]
        return x[0].numpy(), guess.numpy()

    def _forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        audio: torch.Tensor,
        times: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.step is None:
            return self.model(x, cond, audio, times, keep)
        if keep is None:
            keep = torch.ones(x.shape[0], dtype=torch.bool)
        out = self.step(x=x, cond_frame=cond, audio=audio, times=times, keep=keep)
        return out["x0"]
