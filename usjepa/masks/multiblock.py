"""Per-sample mask samplers (`mask.sampler=per_sample`): index sets drawn per image from its own generator.

Unlike the reference collators (`usjepa.masks.reference`), every block of every image draws its own scale and
log-uniform aspect, blocks may touch every edge, and nothing is truncated (the collator pads instead).

A sampler returns, for one image, a list of *mask pairs*; each pair is a context index set (what the
student sees) and a list of target index sets (what the predictor must predict). Index sets are
sorted 1-D int64 arrays in raster order. All samplers honour an optional per-patch validity map
(ultrasound region conditioning, USrc-JEPA): blocks are intersected with the valid patches and
rejected when fewer than `tau` valid patches remain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MaskPair = tuple[np.ndarray, list[np.ndarray]]


def _block(
    rng: np.random.Generator, grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float]
) -> np.ndarray:
    """A rectangular block as a bool [H, W] map; scale and aspect are drawn independently."""
    H, W = grid
    s = rng.uniform(*scale)
    # log-uniform aspect so that (0.75, 1.5) is symmetric around 1 on the ratio scale
    a = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))) if aspect[0] != aspect[1] else aspect[0]
    area = s * H * W
    h = int(np.clip(round(np.sqrt(area * a)), 1, H))
    w = int(np.clip(round(np.sqrt(area / a)), 1, W))
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    m = np.zeros(grid, dtype=bool)
    m[top : top + h, left : left + w] = True
    return m


def flat_indices(m: np.ndarray) -> np.ndarray:
    """A boolean grid as the sorted raster indices of its True patches."""
    return np.flatnonzero(m.reshape(-1)).astype(np.int64)


@dataclass
class MultiBlockSettings:
    """The multi-block settings (I-JEPA defaults) that both multi-block samplers take: the per-sample
    `MultiBlockMasker` here and the reference `usjepa.masks.reference.IJepaMultiBlock`."""

    grid: tuple[int, int]
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    target_scale: tuple[float, float] = (0.075, 0.125)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    num_targets: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    tau: int = 1
    max_tries: int = 20
    num_pairs = 1


@dataclass
class MultiBlockMasker(MultiBlockSettings):
    """I-JEPA / US-JEPA: one context block minus `num_targets` target blocks, each target predicted on its own."""

    @property
    def min_context(self) -> int:
        # min_keep is an absolute count on the published 14x14 grid; never ask for more than a quarter of a small grid
        return max(1, min(self.min_keep, (self.grid[0] * self.grid[1]) // 4))

    def __call__(self, rng: np.random.Generator, valid: np.ndarray | None = None) -> list[MaskPair]:
        valid = np.ones(self.grid, dtype=bool) if valid is None else valid.reshape(self.grid)
        n_valid = int(valid.sum())
        tau = max(1, min(self.tau, n_valid))
        for _ in range(self.max_tries):
            targets = []
            for _ in range(self.num_targets):
                for _ in range(self.max_tries):
                    t = _block(rng, self.grid, self.target_scale, self.target_aspect) & valid
                    if t.sum() >= tau:
                        break
                targets.append(t)
            covered = np.logical_or.reduce(targets)
            if not all(t.any() for t in targets):
                continue
            for _ in range(self.max_tries):
                c = _block(rng, self.grid, self.context_scale, self.context_aspect) & valid
                if not self.allow_overlap:
                    c &= ~covered
                if c.sum() >= min(self.min_context, max(1, n_valid - int(covered.sum()))):
                    return [(flat_indices(c), [flat_indices(t) for t in targets])]
        # rare fallback: all valid non-target patches as context (never an empty context)
        c = valid & ~covered
        if not c.any():
            c = valid.copy()
            c.flat[flat_indices(targets[0])[:1]] = False
            c = c if c.any() else valid
        log.debug("mask sampler fell back to the complement context")
        return [(flat_indices(c), [flat_indices(t) for t in targets])]


@dataclass
class ComplementSettings:
    """The long-short complement settings (V-JEPA / SALT defaults) that both complement samplers take: the
    per-sample `ComplementMasker` here and the reference `usjepa.masks.reference.VJepaMultiBlock`."""

    grid: tuple[int, int]
    generators: tuple[tuple[int, float], ...] = ((8, 0.15), (2, 0.7))  # (num_blocks, spatial scale)
    aspect: tuple[float, float] = (0.75, 1.5)
    tau: int = 1
    max_tries: int = 20

    @property
    def num_pairs(self) -> int:
        return len(self.generators)


@dataclass
class ComplementMasker(ComplementSettings):
    """V-JEPA / SALT: for each generator, the union of `num_blocks` blocks is the target, its complement the context."""

    def __call__(self, rng: np.random.Generator, valid: np.ndarray | None = None) -> list[MaskPair]:
        valid = np.ones(self.grid, dtype=bool) if valid is None else valid.reshape(self.grid)
        tau = max(1, min(self.tau, int(valid.sum()) // 2))
        pairs = []
        for n_blocks, scale in self.generators:
            for _ in range(self.max_tries):
                tgt = np.logical_or.reduce(
                    [_block(rng, self.grid, (scale, scale), self.aspect) for _ in range(n_blocks)]
                )
                tgt &= valid
                ctx = valid & ~tgt
                if tgt.sum() >= tau and ctx.sum() >= tau:
                    break
            else:  # keep at least one patch on each side
                flat = flat_indices(valid)
                ctx = np.zeros(self.grid, dtype=bool)
                ctx.flat[flat[: max(1, len(flat) // 10)]] = True
                tgt = valid & ~ctx
            pairs.append((flat_indices(ctx), [flat_indices(tgt)]))
        return pairs


@dataclass
class RandomMasker:
    """MAE-style: a random `ratio` of the (valid) patches is masked (target), the rest is visible (context)."""

    grid: tuple[int, int]
    ratio: float = 0.75
    num_pairs = 1

    def __call__(self, rng: np.random.Generator, valid: np.ndarray | None = None) -> list[MaskPair]:
        n = self.grid[0] * self.grid[1]
        pool = np.arange(n) if valid is None else flat_indices(valid.reshape(self.grid))
        if len(pool) < 2:
            pool = np.arange(n)
        perm = rng.permutation(pool)
        n_ctx = int(np.clip(round(len(pool) * (1 - self.ratio)), 1, len(pool) - 1))
        return [(np.sort(perm[:n_ctx]), [np.sort(perm[n_ctx:])])]
