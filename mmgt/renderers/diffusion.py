"""Renderer ``diffusion``: MMGT stage 2 (MM-HAA video diffusion) behind the renderer interface.

Per avatar, :meth:`DiffusionRenderer.prepare` computes once what every window and session
reuses: the VAE latent of the photo, its CLIP image embedding and the ReferenceNet bank.

Per frame the renderer needs the pose image (drawn like the official renderer at the model's
resolution; the official pipeline also passes it through an x264 round trip, which is skipped
here), the motion-mask pyramid wired into the three MM-HAA branches, and wav2vec2 audio tokens.
Masks are computed here from the poses at the model resolution, so the renderer works at any
avatar size; frames are decoded by the VAE and resized to the avatar size.

Every exported network (pose guider, audio projection, VAE encoder and decoder, ReferenceNet,
UNet window step; :mod:`mmgt.models.stage2_steps`) is called through a runner of the chosen
backend (:class:`mmgt.backend.Backend`): torch, ONNX Runtime or TensorRT run the same code path.
CLIP and wav2vec2 stay in torch. Tensors are kept on the models' device and dtype; runners cast
their inputs and the renderer casts their outputs back.

* :meth:`DiffusionRenderer.render_clip`: offline, the official long-video scheme (whole-clip
  wav2vec2, overlapping windows averaged at every step; :mod:`.diffusion_windows`).
* :meth:`DiffusionRenderer.open_stream`: live; each window continues from the latents of the
  frames already emitted. Audio arrives as 16 kHz PCM rows (``audio_kind = "pcm16k"``, 640
  samples per frame) and wav2vec2 runs over a causal look-behind window (see
  :mod:`mmgt.audio.wav2vec` for how that differs from offline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from mmgt.audio import wav2vec as w2v
from mmgt.audio.separation import VocalSeparator
from mmgt.backend import Backend
from mmgt.keypoints.render import render_pose
from mmgt.masks import MotionMaskStream
from mmgt.models.mmhaa import OFFICIAL_REGION_WEIGHTS, BranchMasks, branch_masks
from mmgt.models.stage2_steps import PER_FRAME_CHUNK, mask_inputs, steps_of
from mmgt.renderers.diffusion_windows import context_windows, sample_continuation, sample_offline
from mmgt.runtime import Runner
from mmgt.schedulers import check_sampling
from mmgt.schedulers.video import DDIMSampler, VideoScheduleConfig
from mmgt.types import PCM_AUDIO_KIND, AudioFeatures, Avatar, KeypointSeq, MaskSet
from mmgt.weights.stage2_models import Stage2Models

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
DECODE_BATCH = 8  # frames per VAE decoder call


@dataclass(frozen=True)
class DiffusionSettings:
    """Sampling settings. Official offline: 30 steps, CFG 3.5, windows 12/4, weights [1, 1, 2]."""

    steps: int = 30
    guidance: float = 3.5
    window: int = 12
    overlap: int = 4
    closed_loop: bool = True
    region_weights: tuple[float, float, float] = OFFICIAL_REGION_WEIGHTS
    mask_mode: str = "official"
    audio_context_s: float = 2.0  # live wav2vec2 look-behind
    seed: int = 42

    def __post_init__(self) -> None:
        check_sampling("diffusion", self.steps, self.guidance)

    @staticmethod
    def live(steps: int = 2, guidance: float = 1.0) -> DiffusionSettings:
        """Few-step sampling for the live engine (CFG off by default: it doubles the cost)."""
        return DiffusionSettings(steps=steps, guidance=guidance)


@dataclass(frozen=True, eq=False)
class DiffusionAvatarState:
    """Per-avatar cache shared by every window and session (read-only after ``prepare``)."""

    avatar: Avatar
    reference_latent: torch.Tensor  # (1, 4, h, w), scaled
    clip_embed: torch.Tensor  # (1, 1, D)
    bank: dict[str, torch.Tensor] = field(repr=False)  # bank_i → (1, h_k·w_k, C_k) float16


@dataclass
class _Window:
    """Conditions of consecutive frames at the model resolution."""

    pose: torch.Tensor  # (1, F, C0, h, w) pose-guider features
    tokens: torch.Tensor  # (1, F, tokens, D)
    masks: BranchMasks  # levels of (F, h_k·w_k)


class DiffusionRenderer:
    name = "diffusion"
    needs_masks = False  # computed here at the model resolution
    needs_audio = True
    audio_kind = PCM_AUDIO_KIND

    def __init__(
        self, models: Stage2Models, settings: DiffusionSettings | None = None,
        backend: Backend | None = None, separator: VocalSeparator | None = None,
    ) -> None:  # fmt: skip
        """``separator``: the official vocal separation before wav2vec2 (offline clips)."""
        self.models = models
        self.separator = separator
        self.settings = settings or DiffusionSettings()
        self.schedule = VideoScheduleConfig()
        self.backend = backend or Backend()
        threads = torch.get_num_threads()
        device = str(models.device)
        self.run: dict[str, Runner] = {
            name: self.backend.runner(
                name, module, device=device, threads=threads, host_outputs=False
            )  # fmt: skip
            for name, module in steps_of(models).items()
        }
        self.prepare_calls = 0

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """A runner's float output on the models' device and dtype."""
        return t.to(self.models.device, self.models.dtype)

    def clip_speech(self, samples: np.ndarray, rate: int, speech16k: np.ndarray) -> np.ndarray:
        """The 16 kHz speech a whole clip's audio tokens come from: the vocals separated from
        the original ``samples`` at ``rate`` (official), or ``speech16k`` without a separator."""
        if self.separator is None:
            return speech16k
        vocals = self.separator.vocals(samples, rate)
        # Resamplers differ by a few samples in length; the clip keeps the speech's length.
        return np.pad(vocals, (0, max(0, speech16k.size - vocals.size)))[: speech16k.size]

    # -- per avatar ---------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, avatar: Avatar) -> DiffusionAvatarState:
        self.prepare_calls += 1
        m, res = self.models, self.models.resolution
        image = Image.fromarray(avatar.image).resize((res, res), Image.LANCZOS)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        latent = self._out(self.run["vae_encoder"](image=x.to(m.device, m.dtype))["latent"])
        clip = clip_embed(m, avatar.image)
        bank = self.run["reference_net"](reference_latent=latent, clip_embed=clip)
        return DiffusionAvatarState(avatar, latent, clip, bank)

    def open_stream(self, state: DiffusionAvatarState) -> DiffusionStream:
        return DiffusionStream(self, state)

    # -- conditions ---------------------------------------------------------------------------
    def _poses_at_model_size(self, poses: KeypointSeq) -> np.ndarray:
        return poses.resized(self.models.resolution).points  # (F, 134, 3)

    def _window(
        self, points: np.ndarray, masks: Sequence[MaskSet], tokens: torch.Tensor
    ) -> _Window:
        res = self.models.resolution
        images = np.stack([render_pose(p, res) for p in points])  # (F, R, R, 3)
        return self._conditions(images, masks, tokens)

    @torch.no_grad()
    def _conditions(
        self, images: np.ndarray, masks: Sequence[MaskSet], tokens: torch.Tensor
    ) -> _Window:
        """Pose images (F, R, R, 3) uint8, masks and audio tokens → the window's conditions."""
        m, features = self.models, []
        for k in range(0, len(images), PER_FRAME_CHUNK):  # per-frame network: exact in chunks
            chunk = images[k : k + PER_FRAME_CHUNK]
            pose = torch.from_numpy(chunk).permute(3, 0, 1, 2)[None].float() / 255  # (1,3,F,R,R)
            out = self.run["pose_guider"](pose_images=pose.to(m.device, m.dtype))
            features.append(self._out(out["pose_features"]))  # (1, F, C0, h, w)
        wired = branch_masks(masks, self.settings.mask_mode).to(m.device, m.dtype)
        return _Window(torch.cat(features, dim=1), self._out(tokens), wired)

    def _denoiser(self, state: DiffusionAvatarState, cond: _Window):
        """The window denoiser of :mod:`.diffusion_windows` (CFG batch when guidance > 1)."""
        s, unet, device = self.settings, self.run["unet_step"], self.models.device
        weights = torch.tensor(s.region_weights, device=device, dtype=self.models.dtype)
        guided = s.guidance > 1.0
        # CFG order as the official pipeline: unconditional first (zero CLIP embedding, zero
        # audio tokens after the projection, no reference bank), then conditional.
        context = torch.cat([torch.zeros_like(state.clip_embed), state.clip_embed])[-1 - guided :]
        keep = torch.tensor([False, True], device=device)[-1 - guided :]

        def denoise(x: torch.Tensor, t: int, idx: Sequence[int]) -> torch.Tensor:
            b, f, idx = 1 + guided, x.shape[2], list(idx)
            tokens = cond.tokens[:, idx]
            if guided:
                tokens = torch.cat([torch.zeros_like(tokens), tokens])
            inputs = {
                "latents": x.expand(b, -1, -1, -1, -1),
                "timestep": torch.tensor([t], device=device),
                "context": context,
                "audio_tokens": tokens,
                "pose_features": cond.pose[:, idx].expand(b, -1, -1, -1, -1),
                "region_weights": weights,
                "bank_keep": keep,
                **mask_inputs(cond.masks.frames(idx).repeat(b), b, f),
                **state.bank,
            }
            v = self._out(unet(**inputs)["v"])  # (b, 4, F, h, w)
            return v if not guided else v[:1] + s.guidance * (v[1:] - v[:1])

        return denoise

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, size: int) -> list[np.ndarray]:
        """(1, 4, F, h, w) latents → F RGB uint8 frames of ``size``²."""
        frames = []
        for k in range(0, latents.shape[2], DECODE_BATCH):
            chunk = latents[0, :, k : k + DECODE_BATCH].transpose(0, 1)  # (n, 4, h, w)
            images = self.run["vae_decoder"](latent=chunk)["image"]  # (n, 3, H, W) in [0, 1]
            for x in images.permute(0, 2, 3, 1).float().cpu().numpy():
                img = (np.nan_to_num(x) * 255).astype(np.uint8)  # truncation, as officially
                if img.shape[0] != size:
                    img = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
                frames.append(img)
        return frames

    def _noise(self, generator: torch.Generator, frames: int) -> torch.Tensor:
        h = self.models.config.unet.sample_size
        noise = torch.randn((1, 4, frames, h, h), generator=generator)
        return noise.to(self.models.device, self.models.dtype)

    # -- offline ------------------------------------------------------------------------------
    @torch.no_grad()
    def render_clip(
        self, state: DiffusionAvatarState, poses: KeypointSeq, speech16k: np.ndarray
    ) -> list[np.ndarray]:
        """Render a whole clip the official way (``len(poses)`` frames at the avatar size)."""
        points = self._poses_at_model_size(poses)
        res = self.models.resolution
        mask_stream = MotionMaskStream(res, names=("face_hands", "lips"))
        masks = [mask_stream.push(p, i) for i, p in enumerate(points)]
        images = np.stack([render_pose(p, res) for p in points])  # (F, R, R, 3)
        return self.render_pose_clip(state, images, masks, speech16k)

    @torch.no_grad()
    def render_pose_clip(
        self, state: DiffusionAvatarState, pose_images: np.ndarray, masks: Sequence[MaskSet],
        speech16k: np.ndarray | None = None,
    ) -> list[np.ndarray]:  # fmt: skip
        """Pose-driven mode (the official ``pose2vid``): pose images (F, R, R, 3) uint8 at the
        model resolution and per-frame mask pyramids (``face_hands``, ``lips``) → F frames.

        Without speech the audio tokens are zeros, as in the official pose2vid (no audio
        conditioning); with speech they are its wav2vec2 tokens (pose and audio driving).
        """
        s, n = self.settings, len(pose_images)
        if speech16k is None:
            proj = self.models.config.audio_proj
            tokens = torch.zeros(1, n, proj.context_tokens, proj.output_dim)
        else:
            tokens = w2v.audio_tokens(self.models.wav2vec, self.run["audio_proj"], speech16k, n)
        cond = self._conditions(pose_images, masks, tokens)
        windows = context_windows(n, s.window, s.overlap, s.closed_loop)
        sampler = DDIMSampler(self.schedule)
        noise = self._noise(torch.Generator().manual_seed(s.seed), n)
        latents = sample_offline(self._denoiser(state, cond), noise, sampler, s.steps, windows)
        return self.decode(latents, state.avatar.frame_size)


@torch.no_grad()
def clip_embed(models: Stage2Models, image: np.ndarray) -> torch.Tensor:
    """(1, 1, D) CLIP image embedding of an RGB uint8 image, preprocessed as the official code
    (resize to 224² bicubic, then the CLIP image processor's defaults)."""
    from transformers import CLIPImageProcessorPil

    small = Image.fromarray(image).resize((224, 224), Image.BICUBIC)
    pixels = CLIPImageProcessorPil()(images=small, return_tensors="pt").pixel_values
    embeds = models.image_encoder(pixel_values=pixels.to(models.device, models.dtype)).image_embeds
    return embeds[:, None]


class DiffusionStream:
    """One live session: windows of ``overlap`` committed + ``window − overlap`` new frames."""

    def __init__(self, renderer: DiffusionRenderer, state: DiffusionAvatarState) -> None:
        s = renderer.settings
        self.renderer, self.state = renderer, state
        self.window = s.window
        self.context = s.overlap
        self.new_frames = s.window - s.overlap
        self.latency_frames = self.new_frames
        self._masks = MotionMaskStream(renderer.models.resolution, names=("face_hands", "lips"))
        self._audio = w2v.StreamingAudioTokens(
            renderer.models.wav2vec, renderer.run["audio_proj"], context_s=s.audio_context_s
        )
        self._points: list[np.ndarray] = []  # model-size poses not yet rendered
        self._mask_sets: list[MaskSet] = []
        self._tokens: list[torch.Tensor] = []  # (1, tokens, D) per pending frame
        self._committed: torch.Tensor | None = None  # (1, 4, C, h, w)
        self._generator = torch.Generator().manual_seed(s.seed)
        self._sampler = DDIMSampler(renderer.schedule)
        self.windows_rendered = 0
        self.frames_emitted = 0
        self.nonfinite_frames = 0  # latent frames replaced because they were NaN or infinite

    def push(
        self,
        poses: KeypointSeq,
        masks: Sequence[MaskSet] | None = None,
        audio: AudioFeatures | None = None,
    ) -> list[np.ndarray]:
        if audio is None or audio.kind != PCM_AUDIO_KIND or len(audio) != len(poses):
            raise ValueError("the diffusion renderer needs one pcm16k audio row per pose")
        points = self.renderer._poses_at_model_size(poses)
        for k, p in enumerate(points):
            self._points.append(p)
            self._mask_sets.append(self._masks.push(p, poses.start_frame + k))
        self._tokens.extend(self._audio.push(audio.values.reshape(-1)))
        out: list[np.ndarray] = []
        while len(self._points) >= self.new_frames and len(self._tokens) >= self.new_frames:
            out.extend(self._render(self.new_frames))
        return out

    def flush(self) -> list[np.ndarray]:
        self._tokens.extend(self._audio.flush())
        real = len(self._points)
        if real == 0:
            return []
        pad = self.new_frames - real
        self._points += [self._points[-1]] * pad
        self._mask_sets += [self._mask_sets[-1]] * pad
        self._tokens += [self._tokens[-1]] * (len(self._points) - len(self._tokens))
        return self._render(self.new_frames)[:real]

    def close(self) -> None:
        self._points.clear()
        self._mask_sets.clear()
        self._tokens.clear()
        self._committed = None

    def _finite(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 4, F, h, w) latents whose frames with NaN or infinite values (e.g. an fp16
        overflow) hold the frame before (the reference for the first), so one bad window does
        not turn the rest of the session black through the committed latents."""
        bad = ~torch.isfinite(latents).flatten(3).all(dim=3).all(dim=1)[0]  # (F,)
        if not bool(bad.any()):
            return latents
        self.nonfinite_frames += int(bad.sum())
        log.warning("the denoiser produced %d non-finite latent frames; they hold the frame "
                    "before", int(bad.sum()))  # fmt: skip
        fixed = latents.clone()
        last = self.state.reference_latent.to(latents.dtype)[:, :, None]  # (1, 4, 1, h, w)
        for f in range(fixed.shape[2]):
            if bad[f]:
                fixed[:, :, f : f + 1] = last
            last = fixed[:, :, f : f + 1]
        return fixed

    @torch.no_grad()
    def _render(self, n: int) -> list[np.ndarray]:
        r, s = self.renderer, self.renderer.settings
        points, masks = np.stack(self._points[:n]), self._mask_sets[:n]
        tokens = torch.stack(self._tokens[:n], dim=1)  # (1, n, tokens, D)
        del self._points[:n], self._mask_sets[:n], self._tokens[:n]
        c = 0 if self._committed is None else self._committed.shape[2]
        if c:  # the committed frames' conditions come first in the window
            points = np.concatenate([self._ctx_points, points])
            masks = self._ctx_masks + list(masks)
            tokens = torch.cat([self._ctx_tokens, tokens], dim=1)
        cond = r._window(points, masks, tokens)
        noise = r._noise(self._generator, c + n)
        latents = sample_continuation(
            r._denoiser(self.state, cond), noise, self._sampler, s.steps, self._committed
        )
        latents = self._finite(latents)
        keep = min(self.context, c + n)
        self._committed = latents[:, :, -keep:].clone()
        self._ctx_points, self._ctx_masks = points[-keep:], list(masks[-keep:])
        self._ctx_tokens = tokens[:, -keep:]
        self.windows_rendered += 1
        self.frames_emitted += n
        return r.decode(latents[:, :, c:], self.state.avatar.frame_size)
