"""Training SMGA (Algorithm 2, stage-1 part): x0-prediction with L_rec + L_vel + L_acc.

* Samples are windows of the model's length cut from clips at random offsets; the condition is
  the clip's reference pose (the avatar's rest pose), the audio features are computed from the
  (optionally augmented) waveform of the window, and the target is the keypoint window in the
  official normalisation.
* Diffusion steps t ~ U{0 … T−1}, x_t = q_sample(x0, t, ε); condition dropout (p = 0.25,
  official) trains the learned null condition for classifier-free guidance.
* Loss: :func:`mmgt.train.losses.smga_loss` (``paper`` mode: λ_f = 3, λ_b = 1 by default).
* AdamW (the paper uses Adan, which no installed library provides), an EMA of the weights,
  validation of the EMA weights every ``eval_every`` steps on a fixed set of (window, t, ε), and
  the best-validation EMA weights kept. Checkpoints hold tensors and plain values only and are
  resumable (``resume=True`` continues from ``last.pt``).
* Device: CPU by default, any ``torch.device`` (e.g. ``cuda:0``) with optional mixed precision.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmgt.drivers import pose_space
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, SMGAConfig
from mmgt.schedulers.pose import CosineSchedule
from mmgt.train.losses import smga_loss
from mmgt.weights.smga import save_smga_safetensors

log = logging.getLogger(__name__)

# A clip: 16 kHz mono float32 audio, (T, 134, 3) keypoints in 512-frame pixels, (134, 3) reference.
Clip = tuple[np.ndarray, np.ndarray, np.ndarray]
FeatureFn = Callable[[np.ndarray], np.ndarray]  # audio16k → (frames, audio_dim)
AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class TrainConfig:
    """Optimisation settings (see the module docstring)."""

    steps: int = 20000
    batch: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.02
    ema_decay: float = 0.999
    residual: bool = True  # denoise motion relative to the reference (mmgt.drivers.pose_space)
    residual_anchor: str = "reference"  # or "closed-mouth" (pose_space.ANCHORS)
    warmup: int = 500  # linear warm-up steps, then cosine decay to 10 % of lr at ``steps``
    cond_drop: float = 0.25
    loss_mode: str = "paper"
    motion_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # L_rec, L_vel, L_acc
    augment_prob: float = 0.7
    eval_every: int = 500
    eval_windows: int = 256
    seed: int = 0
    device: str = "cpu"
    mixed_precision: bool = False
    threads: int | None = None
    log_every: int = 100
    max_minutes: float | None = None  # stop (resumably) after this much wall time
    extra: dict = field(default_factory=dict)


class WindowSampler:
    """Random training windows (audio features, poses, reference) from a set of clips.

    Features are computed once per clip for the clean audio and for ``variants`` augmented
    copies (augmentation is the costly part, so it is not redone per window); a window takes
    the clean features with probability 1 − ``augment_prob``, else a random augmented copy.
    The light features are frame-local, so a window cut from whole-clip features equals the
    features of the window's own audio.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        window: int,
        features: FeatureFn,
        augment: AugmentFn | None = None,
        augment_prob: float = 0.0,
        variants: int = 2,
        seed: int = 0,
    ) -> None:
        usable = [c for c in clips if len(c[1]) >= window]
        if not usable:
            raise ValueError(f"no clip has {window} frames or more")
        self.clips, self.window = usable, window
        self.features = features
        self.augment_prob = augment_prob if augment is not None else 0.0
        rng = np.random.default_rng(seed)
        self.feats: list[list[np.ndarray]] = []  # per clip: [clean, augmented…], each (T, A)
        for audio, kp, _ in usable:
            versions = [audio] + ([augment(audio, rng) for _ in range(variants)] if augment else [])
            self.feats.append([_fit(features(v), len(kp)) for v in versions])
        self.targets = [layout.normalize(c[1]) for c in usable]  # (T, 402) each
        self.refs = [layout.normalize(c[2]) for c in usable]
        self.weights = np.array([len(c[1]) - window + 1 for c in usable], np.float64)
        self.weights /= self.weights.sum()

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (W, A), target (W, 402), reference (402,)) of one random window."""
        i = int(rng.choice(len(self.clips), p=self.weights))
        start = int(rng.integers(0, len(self.targets[i]) - self.window + 1))
        versions = self.feats[i]
        v = 0
        if len(versions) > 1 and rng.random() < self.augment_prob:
            v = int(rng.integers(1, len(versions)))
        stop = start + self.window
        return versions[v][start:stop], self.targets[i][start:stop], self.refs[i]

    def use_residual(self, pose_std: np.ndarray, anchor: str = "reference") -> None:
        """Switch targets to the residual space (:mod:`mmgt.drivers.pose_space`)."""
        self.targets = [
            pose_space.to_residual(t, r, pose_std, anchor)
            for t, r in zip(self.targets, self.refs, strict=True)
        ]

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
        items = [self.sample(rng) for _ in range(n)]
        return tuple(
            torch.from_numpy(np.stack(x).astype(np.float32)) for x in zip(*items, strict=True)
        )


def _fit(feats: np.ndarray, frames: int) -> np.ndarray:
    """Cut or edge-pad per-frame features to the clip's frame count."""
    if len(feats) >= frames:
        return feats[:frames]
    return np.concatenate([feats, np.repeat(feats[-1:], frames - len(feats), 0)])


def feature_stats(sampler: WindowSampler, rng: np.random.Generator, n: int = 512) -> tuple:
    """Per-dimension mean and std of the clean features, for input normalisation."""
    pick = rng.choice(len(sampler.clips), size=min(n, len(sampler.clips)), replace=False)
    feats = np.concatenate([sampler.feats[int(i)][0] for i in pick])
    return feats.mean(0).astype(np.float32), (feats.std(0) + 1e-3).astype(np.float32)


def train_smga(
    model_config: SMGAConfig,
    train: WindowSampler,
    val: WindowSampler,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    feature_kind: str = "light-v1",
) -> dict:
    """Train, keep the best EMA weights (``best.safetensors``), return a summary."""
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # tiny Adam moments turn denormal and slow CPU maths ~3×
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = SMGA(model_config).to(device)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = CosineSchedule()
    mean, std = feature_stats(train, np.random.default_rng(cfg.seed + 1))
    pose_std = None
    weights_meta = {"feature_kind": feature_kind}
    if cfg.residual:
        anchor = weights_meta["residual_anchor"] = cfg.residual_anchor
        pose_std = pose_space.residual_std(train.targets, train.refs, anchor)
        train.use_residual(pose_std, anchor)
        val.use_residual(pose_std, anchor)
    step, best, history = 0, float("inf"), []
    last = out / "last.pt"
    if resume and last.is_file():
        state = _load_state(last, device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        mean, std = state["audio_mean"].numpy(), state["audio_std"].numpy()
        rng = np.random.default_rng([cfg.seed, step])
        history = json.loads(state["history"])
        log.info("resumed at step %d (best validation %.5f)", step, best)
    mean_t, std_t = torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device)
    val_set = _fixed_validation(val, cfg, sched)
    amp = cfg.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    t0 = time.perf_counter()
    deadline = None if cfg.max_minutes is None else t0 + 60 * cfg.max_minutes
    first_step = step  # the rate counts this run's steps, not the resumed ones
    while step < cfg.steps:
        if deadline is not None and time.perf_counter() > deadline:
            log.info("time budget of %.1f min reached at step %d", cfg.max_minutes, step)
            v = _validate(ema, val_set, mean_t, std_t, cfg)
            history.append({"step": step, "train_loss": float("nan"), "val_loss": v})
            if v < best:
                best = v
                _save_weights(
                    ema, out / "best.safetensors", mean, std, pose_std, weights_meta, step, v
                )
            _save_state(last, model, ema, opt, step, best, mean, std, history)
            break
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        feats, x0, ref = (x.to(device) for x in train.batch(rng, cfg.batch))
        t = torch.randint(0, sched.timesteps, (cfg.batch,), device=device)
        noise = torch.randn_like(x0)
        x_t = sched.q_sample(x0, t, noise)
        keep = torch.rand(cfg.batch, device=device) >= cfg.cond_drop
        with torch.autocast(device.type, enabled=amp):
            pred = model(x_t, ref, (feats - mean_t) / std_t, t, keep)
            loss, _ = smga_loss(
                pred.float(), x0, mode=cfg.loss_mode, term_weights=cfg.motion_weights
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        step += 1
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if step % cfg.log_every == 0:
            log.info(
                "step %d loss %.5f (%.1f steps/s)",
                step,
                loss.item(),
                (step - first_step) / max(time.perf_counter() - t0, 1e-6),
            )
        if step % cfg.eval_every == 0 or step == cfg.steps:
            v = _validate(ema, val_set, mean_t, std_t, cfg)
            history.append({"step": step, "train_loss": loss.item(), "val_loss": v})
            if v < best:
                best = v
                _save_weights(
                    ema, out / "best.safetensors", mean, std, pose_std, weights_meta, step, v
                )
            _save_state(last, model, ema, opt, step, best, mean, std, history)
            log.info("step %d validation %.5f (best %.5f)", step, v, best)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return {
        "steps": step,
        "best_val_loss": best,
        "history": history,
        "seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
    }


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % (a function of the step: resume-safe)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    # A Python float: a NumPy scalar in the optimizer's state would not load with weights_only.
    return float(cfg.lr * (0.1 + 0.45 * (1 + np.cos(np.pi * progress))))


def _fixed_validation(val: WindowSampler, cfg: TrainConfig, sched: CosineSchedule) -> list:
    """A fixed set of (features, x0, ref, t, noise) batches, identical at every evaluation."""
    rng = np.random.default_rng(cfg.seed + 7)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    batches, left = [], cfg.eval_windows
    while left > 0:
        n = min(left, cfg.batch)
        feats, x0, ref = val.batch(rng, n)
        t = torch.randint(0, sched.timesteps, (n,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        batches.append((feats, x0, ref, t, sched.q_sample(x0, t, noise)))
        left -= n
    return batches


@torch.no_grad()
def _validate(
    model: SMGA, batches: list, mean: torch.Tensor, std: torch.Tensor, cfg: TrainConfig
) -> float:
    device = mean.device
    total, n = 0.0, 0
    for feats, x0, ref, t, x_t in batches:
        feats, x0, ref, t, x_t = (x.to(device) for x in (feats, x0, ref, t, x_t))
        pred = model(x_t, ref, (feats - mean) / std, t)
        loss, _ = smga_loss(pred, x0, mode=cfg.loss_mode, term_weights=cfg.motion_weights)
        total += float(loss) * len(x0)
        n += len(x0)
    return total / n


def _save_weights(  # noqa: PLR0913
    model: SMGA,
    path: Path,
    mean,
    std,
    pose_std,
    meta: dict[str, str],
    step: int,
    val: float,  # noqa: ANN001
) -> None:
    """The EMA weights with ``meta`` (feature kind, residual anchor), the step and the loss."""
    tmp = path.with_suffix(".tmp")
    extra = {**meta, "step": str(step), "val_loss": f"{val:.6f}"}
    save_smga_safetensors(
        model, tmp, audio_mean=mean, audio_std=std, pose_std=pose_std, extra=extra
    )
    tmp.replace(path)


def _load_state(path: Path, device: torch.device) -> dict:
    """``last.pt`` with ``weights_only``; NumPy float scalars are allowed as data, since runs
    before 2026-12-07 stored the cosine phase's learning rate as one."""
    scalars = [np.dtype, type(np.dtype("f8")), np.float64(0).__reduce__()[0]]
    with torch.serialization.safe_globals(scalars):
        return torch.load(path, map_location=device, weights_only=True)


def _save_state(path: Path, model, ema, opt, step, best, mean, std, history) -> None:  # noqa: ANN001
    tmp = path.with_suffix(".tmp")
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "best": best,
        "audio_mean": torch.from_numpy(mean),
        "audio_std": torch.from_numpy(std),
        "history": json.dumps(history),
    }
    torch.save(state, tmp)
    tmp.replace(path)
