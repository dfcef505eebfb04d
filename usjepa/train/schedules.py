"""Schedules are arrays indexed by optimizer step, precomputed once: resume needs no replay."""

from __future__ import annotations

import numpy as np


def warmup_steps(warmup: float, total: int) -> int:
    """`warmup` < 1 is a share of the run, >= 1 a number of steps."""
    return int(round(warmup * total)) if warmup < 1 else int(warmup)


def warmup_cosine(start: float, peak: float, final: float, warmup: int, total: int) -> np.ndarray:
    """Linear start -> peak over `warmup` steps, then cosine peak -> final; one value per step 0..total."""
    steps = np.arange(total + 1, dtype=np.float64)
    out = np.empty_like(steps)
    w = max(int(warmup), 0)
    if w > 0:
        out[:w] = start + (peak - start) * steps[:w] / w
    rest = steps[w:] - w
    span = max(total - w, 1)
    out[w:] = final + 0.5 * (peak - final) * (1 + np.cos(np.pi * np.clip(rest / span, 0, 1)))
    return out


def cosine(start: float, end: float, total: int) -> np.ndarray:
    """Cosine from start to end over the run (I-JEPA's weight-decay schedule)."""
    t = np.arange(total + 1, dtype=np.float64) / max(total, 1)
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))


def peak_lr(optim_cfg, batch_size: int) -> float:
    """`optim.lr`, or MAE's linear scaling rule blr x batch / 256 when `optim.blr` > 0."""
    blr = float(getattr(optim_cfg, "blr", 0.0) or 0.0)
    return blr * batch_size / 256 if blr > 0 else float(optim_cfg.lr)


def optim_schedules(optim_cfg, batch_size: int, total: int, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(lr per step, weight decay per step) for the `optim:` section; warmup in epochs when `warmup_epochs` > 0."""
    o = optim_cfg
    w_epochs = float(getattr(o, "warmup_epochs", 0.0) or 0.0)
    w = int(round(w_epochs * steps_per_epoch)) if w_epochs > 0 else warmup_steps(o.warmup, total)
    lr = warmup_cosine(o.start_lr, peak_lr(o, batch_size), o.final_lr, min(w, total), total)
    return lr, cosine(o.weight_decay, o.final_weight_decay, total)
