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
