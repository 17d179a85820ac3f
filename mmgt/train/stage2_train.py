"""Training MMGT stage 2 (Algorithm 2, stage-2 part): the official two processes.

* **Process 1** (image level, official ``train_stage_1.py``): one frame per sample; trains the
  ReferenceNet (except ``up_blocks.3``), the denoising UNet's spatial layers and the pose
  guider. The UNet runs without its motion modules (``motion=False``) and without its MM-HAA
  audio modules (``audio_tokens=None``); neither is trained or saved.
* **Process 2** (video level, ``train_stage_2.py``): windows of ``frames`` (12) frames; trains
  the audio projection and the UNet's motion and audio modules, everything else frozen.

Both use :class:`~mmgt.train.stage2_parts.Stage2Objective` (official recipe), AdamW at a
constant learning rate with gradient clipping at 1, and validate on held-out clips with fixed
samples, noise and timesteps every ``eval_every`` steps; each validation writes a checkpoint in
the official layout (the last ``keep_last`` are kept), the lowest-validation checkpoint is also
written to ``best/`` (the paper keeps that one), and ``last.pt`` (model, optimiser, step, RNG
states, best, history) makes a run resumable. Outputs: docs/training_stage2.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mmgt.errors import InputError
from mmgt.train.stage2_data import Stage2Clips, find_clips
from mmgt.train.stage2_parts import (
    Recipe,
    Stage2Objective,
    enable_checkpointing,
    output_names,
    save_outputs,
    set_trainable,
)
from mmgt.weights.stage2 import diff_state
from mmgt.weights.stage2_models import Stage2Models

log = logging.getLogger(__name__)
STATE = "last.pt"
BEST = "best"


@dataclass
class Stage2TrainConfig:
    """Run settings (defaults: official process 2; :meth:`official` for either process)."""

    process: int = 2
    steps: int = 32500
    batch: int = 1
    frames: int = 12  # process 1 always uses 1
    lr: float = 1e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    recipe: Recipe = field(default_factory=Recipe)
    mask_mode: str = "official"  # the inference wiring (full = 1 + lips); see stage2_data
    reference: str = "random"
    size: int | None = None  # training frame side; None: the model's (official process 1: 256)
    val_fraction: float = 0.1  # of the clips held out, unless CLIPS/val/ exists
    eval_every: int = 500
    eval_samples: int = 8
    keep_last: int = 3
    seed: int = 0
    device: str = "cpu"
    mixed_precision: bool = False  # fp16 autocast on CUDA
    gradient_checkpointing: bool = False
    max_minutes: float | None = None
    log_every: int = 50

    @classmethod
    def official(cls, process: int, **overrides: object) -> Stage2TrainConfig:
        """Official process 1 (30k steps, batch 4, 1 frame) or 2 (32.5k, batch 1, 12 frames)."""
        base = cls(process=1, steps=30000, batch=4, frames=1) if process == 1 else cls()
        return replace(base, **overrides)

    @property
    def window(self) -> int:
        return 1 if self.process == 1 else self.frames


def open_clips(
    folder: str | os.PathLike[str], models: Stage2Models, cfg: Stage2TrainConfig
) -> tuple[Stage2Clips, Stage2Clips]:
    """(train, validation) clips: ``folder/val/*.npz`` if present, else a seeded held-out
    fraction of ``folder`` (at least one clip; a single clip validates on itself)."""
    paths = find_clips(folder)
    val_dir = Path(folder) / "val"
    if val_dir.is_dir() and any(val_dir.glob("*.npz")):
        val_paths = find_clips(val_dir)
    elif len(paths) == 1:
        log.warning("one clip only: validating on the training clip")
        val_paths = paths
    else:
        n_val = min(max(1, round(cfg.val_fraction * len(paths))), len(paths) - 1)
        order = np.random.default_rng(cfg.seed).permutation(len(paths))
        val_paths = [paths[i] for i in sorted(order[:n_val])]
        paths = [paths[i] for i in sorted(order[n_val:])]
    kw = dict(frames=cfg.window, audio=cfg.process == 2, mask_mode=cfg.mask_mode,
              reference=cfg.reference, resolution=cfg.size)  # fmt: skip
    train = Stage2Clips(paths, models, augment=cfg.process == 1, **kw)  # the official crop
    return train, Stage2Clips(val_paths, models, **kw)


def train_stage2(
    models: Stage2Models, train: Stage2Clips, val: Stage2Clips, out_dir: str | os.PathLike[str],
    cfg: Stage2TrainConfig, *, resume: bool = False,
) -> dict:  # fmt: skip
    """Train one process; returns a summary (steps, validation history, best step, outputs)."""
    if cfg.process not in (1, 2):
        raise InputError(f"--process must be 1 or 2, got {cfg.process}")
    if cfg.steps < 0 or cfg.batch < 1 or cfg.eval_every < 1 or cfg.eval_samples < 1:
        raise InputError("--steps ≥ 0, --batch ≥ 1, --eval-every ≥ 1, --eval-samples ≥ 1")
    if train.frames != cfg.window or val.frames != cfg.window:
        raise InputError(f"process {cfg.process} needs {cfg.window}-frame clip windows")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise InputError(f"--device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {cfg.device}: CUDA is not available here")
    run = _Run(models, val, Path(out_dir), cfg)
    if resume and run.state_path.is_file():
        run.load_state()
        log.info("resumed at step %d (best validation %.5f)", run.step, run.best)
    if run.step == 0 and not run.history:
        run.history.append({"step": 0, "val_loss": run.validate()})
    t0 = time.perf_counter()
    deadline = None if cfg.max_minutes is None else t0 + 60 * cfg.max_minutes
    saved = run.step
    while run.step < cfg.steps:
        if deadline is not None and time.perf_counter() > deadline:
            log.info("time budget of %.1f min reached at step %d", cfg.max_minutes, run.step)
            break
        loss = run.train_step(train)
        if run.step % cfg.log_every == 0:
            log.info("step %d loss %.5f", run.step, loss)
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
            run.checkpoint()
            saved = run.step
    if run.step > saved:  # stopped by the time budget between validations
        run.checkpoint()
    (run.out / "history.json").write_text(json.dumps(run.history, indent=1))
    return {
        "process": cfg.process,
        "steps": run.step,
        "val_before": run.history[0]["val_loss"] if run.history else None,
        "best_val_loss": run.best,
        "best_step": run.best_step,
        "best": str(run.out / BEST),
        "history": run.history,
        "seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
    }


class _Run:
    """The mutable state of one training run: networks, optimiser, RNGs, step, best, history."""

    def __init__(self, models: Stage2Models, val: Stage2Clips, out: Path, cfg: Stage2TrainConfig):
        out.mkdir(parents=True, exist_ok=True)
        torch.set_flush_denormal(True)  # tiny Adam moments turn denormal and slow CPU maths ~3×
        self.out, self.cfg, self.state_path = out, cfg, out / STATE
        self.device = torch.device(cfg.device)
        models.to(str(self.device), "fp32")
        for frozen in (models.vae, models.image_encoder, models.wav2vec):
            frozen.requires_grad_(False)
        self.net = models.net
        self.params = set_trainable(self.net, cfg.process)
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.net)
        self.objective = Stage2Objective(models, cfg.process, cfg.recipe)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.amp = cfg.mixed_precision and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step, self.best, self.best_step = 0, math.inf, None
        self.history: list[dict] = []
        self.losses: list[float] = []  # training losses since the last checkpoint
        self.val_set = _fixed_validation(self.objective, val, cfg)

    def train_step(self, train: Stage2Clips) -> float:
        """One optimiser step on a random batch; returns its loss."""
        self.net.train()
        obj = self.objective
        enc = obj.encode(train.batch(self.data_gen, self.cfg.batch), self.noise_gen)
        draw = obj.draw(enc, self.noise_gen)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = obj.loss(self.net, enc, draw).mean()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    @torch.no_grad()
    def validate(self) -> float:
        """Mean weighted loss over the fixed validation samples."""
        self.net.eval()
        dev, total, n = str(self.device), 0.0, 0
        for enc, d in self.val_set:
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = self.objective.loss(self.net, _to(enc, dev), _to(d, dev))
            total, n = total + float(loss.sum()), n + len(loss)
        return total / n

    def checkpoint(self) -> None:
        """Validate; write the step's files (and ``best/`` if it improved); prune; save state."""
        v, cfg, step = self.validate(), self.cfg, self.step
        train_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        self.history.append({"step": step, "train_loss": train_loss, "val_loss": v})
        self.losses = []
        log.info("step %d train %.5f validation %.5f (best %.5f)", step, train_loss, v, self.best)
        save_outputs(self.net, cfg.process, self.out, step)
        self._prune()
        if v < self.best:
            old, self.best, self.best_step = self.best_step, v, step
            save_outputs(self.net, cfg.process, self.out / BEST, step)
            if old is not None and old != step:  # new files first: a crash keeps a best copy
                for name in output_names(cfg.process, old):
                    (self.out / BEST / name).unlink(missing_ok=True)
        self.save_state()

    def _prune(self) -> None:
        """Delete step files beyond the newest ``keep_last`` checkpoints."""
        first = output_names(self.cfg.process, 0)[0].split("-")[0]
        tails = (p.stem.rsplit("-", 1)[1] for p in self.out.glob(f"{first}-*.pth"))
        steps = sorted(int(t) for t in tails if t.isdigit())
        for s in steps[: max(len(steps) - self.cfg.keep_last, 0)]:
            if s != self.step:
                for name in output_names(self.cfg.process, s):
                    (self.out / name).unlink(missing_ok=True)

    def save_state(self) -> None:
        state = {
            "net": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data_rng": self.data_gen.get_state(),
            "noise_rng": self.noise_gen.get_state(),
            "step": self.step,
            "best": self.best,
            "best_step": -1 if self.best_step is None else self.best_step,
            "history": json.dumps(self.history),
            "process": self.cfg.process,
            "frames": self.cfg.window,
        }
        tmp = self.state_path.with_name(STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def load_state(self) -> None:
        path, cfg = self.state_path, self.cfg
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            raise InputError(f"{path} is not a readable training state ({exc})") from exc
        if (state["process"], state["frames"]) != (cfg.process, cfg.window):
            raise InputError(f"{path} is a process-{state['process']} run with "
                             f"{state['frames']}-frame windows, not process {cfg.process} with "
                             f"{cfg.window}; use another --out or drop --resume")  # fmt: skip
        shapes = {k: v.shape for k, v in self.net.state_dict().items()}
        problems = diff_state(shapes, state["net"])
        if problems:
            raise InputError(f"{path} holds other networks: {'; '.join(problems[:5])}")
        self.net.load_state_dict(state["net"], strict=True)
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.data_gen.set_state(state["data_rng"])
        self.noise_gen.set_state(state["noise_rng"])
        self.step, self.best = int(state["step"]), float(state["best"])
        self.best_step = None if int(state["best_step"]) < 0 else int(state["best_step"])
        self.history = json.loads(state["history"])


def _fixed_validation(objective: Stage2Objective, val: Stage2Clips, cfg: Stage2TrainConfig):  # noqa: ANN202
    """Fixed (encoded batch, draw) pairs: the same samples, noise and timesteps every time;
    timesteps are stratified over [0, T) and no condition is dropped. Kept on the CPU."""
    data = torch.Generator().manual_seed(cfg.seed + 7)
    noise = torch.Generator().manual_seed(cfg.seed + 8)
    n_t = objective.schedule.config.num_train_timesteps
    strata = torch.randperm(cfg.eval_samples, generator=noise)
    out, done = [], 0
    while done < cfg.eval_samples:
        n = min(cfg.batch, cfg.eval_samples - done)
        enc = objective.encode(val.batch(data, n))
        d = objective.draw(enc, noise, drop=False)
        u = strata[done : done + n] + torch.rand(n, generator=noise)
        d.t = (u * n_t / cfg.eval_samples).long().clamp(max=n_t - 1).to(d.t.device)
        out.append((_to(enc, "cpu"), _to(d, "cpu")))
        done += n
    return out


def _to(x, device: str):  # noqa: ANN001, ANN202 - Encoded / Draw → a copy on ``device``
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(x).items()}
    if getattr(x, "masks", None) is not None:
        moved["masks"] = x.masks.to(device, torch.float32)
    return type(x)(**moved)
