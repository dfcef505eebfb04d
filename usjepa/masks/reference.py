"""Reference-faithful batch mask samplers: the rules of I-JEPA's and V-JEPA's mask collators, on our seeds.

I-JEPA (`IJepaMultiBlock`, US-JEPA / I-JEPA presets):
  - one target shape and one context shape per batch; each comes from ONE uniform draw that sets both the
    scale and the aspect ratio (so they are correlated); the context aspect is fixed (1, 1 by default);
  - h = round(sqrt(keep * a)), w = round(sqrt(keep / a)) with keep = int(H * W * scale), then decremented while
    >= the grid side, and the top-left corner is drawn from [0, H - h) (exclusive): no block reaches the last
    row or column;
  - the context block is intersected with the complement of every target block; a block is valid when it keeps
    more than `min_keep` patches; after 20 failed placements the constraint of the last remaining target is
    dropped (I-JEPA's `tries`);
  - every context list and every target list is truncated to the shortest one in the batch (raster order, so
    the bottom-most patches of larger masks go).
V-JEPA (`VJepaMultiBlock`, SALT preset), per mask generator (8 x 0.15 and 2 x 0.7):
  - one (h, w) per batch from independent scale and aspect draws, clipped to the grid; both generators draw
    from the same per-batch seed, as V-JEPA's generators share their step counter;
  - per image the union of `num_blocks` blocks (corners in [0, H - h], edges reachable) is the target and its
    complement the context; an empty context is redrawn; both lists are truncated to the batch minimum.

Randomness: the shapes come from a generator seeded by the batch's item seeds (sorted), each image's placements
from a generator seeded by its own item seed, so masks are a pure function of the items: exact resume holds.
Upstream places blocks with the global torch RNG; the statistics are the same, the streams are not.

Region conditioning (USrc-JEPA) in these samplers, our definition (the paper gives the rule, not the code):
a target block is intersected with the valid patches and re-placed until at least `tau` remain (the paper's
rejection rule); the context block is intersected with the valid patches and must also keep at least `tau`
(besides I-JEPA's min_keep); V-JEPA targets and contexts are both restricted to the valid patches and need
`tau` each. Truncation then acts on the intersected lists, as the reference collator would on such lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from usjepa.masks.collator import MaskBatch
from usjepa.masks.multiblock import ComplementSettings, MultiBlockSettings, flat_indices

RETRIES = 20  # I-JEPA's placement timeout before it relaxes a constraint


def batch_rng(seeds: Sequence[int]) -> np.random.Generator:
    """The per-batch generator: the same items give the same shapes, whatever their order."""
    return np.random.default_rng([0x42415443, *sorted(int(s) & ((1 << 63) - 1) for s in seeds)])


def item_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & ((1 << 63) - 1), 0x6D61736B])


def truncate_to_min(rows: list[np.ndarray]) -> torch.Tensor:
    """Index lists (raster order) -> [B, K] with K the shortest length: the reference collators' truncation."""
    k = min(len(r) for r in rows)
    return torch.from_numpy(np.stack([r[:k] for r in rows]).astype(np.int64))


def _box(grid: tuple[int, int], top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(grid, dtype=bool)
    m[top : top + h, left : left + w] = True
    return m


@dataclass
class IJepaMultiBlock(MultiBlockSettings):
    """I-JEPA MaskCollator semantics: one context block minus `num_targets` target blocks per image."""

    def block_shape(self, rng: np.random.Generator, scale, aspect) -> tuple[int, int]:
        """One uniform draw sets scale and aspect together (I-JEPA's `_sample_block_size`)."""
        H, W = self.grid
        r = float(rng.random())
        keep = int(H * W * (scale[0] + r * (scale[1] - scale[0])))
        a = aspect[0] + r * (aspect[1] - aspect[0])
        h, w = int(round(math.sqrt(keep * a))), int(round(math.sqrt(keep / a)))
        while h >= H and h > 1:
            h -= 1
        while w >= W and w > 1:
            w -= 1
        return max(h, 1), max(w, 1)

    def _place(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
        H, W = self.grid
        return int(rng.integers(0, max(H - h, 1))), int(rng.integers(0, max(W - w, 1)))  # exclusive upper bound

    def _enough(self, n: int, area: int) -> bool:
        # `len > min_keep`; on grids smaller than the published 14x14 a block may hold fewer than min_keep
        # patches, where upstream would loop forever: there min_keep is capped at the block's area - 1
        return n > min(self.min_keep, area - 1)

    def _target(self, rng, h, w, valid) -> tuple[np.ndarray, np.ndarray]:
        """(target patches, the whole block): the block alone without a region; with one, re-placed until tau."""
        best = None
        for _ in range(self.max_tries if valid is not None else 1):
            block = _box(self.grid, *self._place(rng, h, w), h, w)
            if valid is None:
                return block, block
            kept = block & valid
            if best is None or kept.sum() > best[0].sum():
                best = (kept, block)
            if kept.sum() >= self.tau:
                return kept, block
        return best if best[0].any() else (best[1], best[1])

    def _context(self, rng, h, w, complements: list[np.ndarray], valid) -> np.ndarray:
        regions = [] if self.allow_overlap else complements
        tries, timeout = 0, RETRIES
        while True:
            c = _box(self.grid, *self._place(rng, h, w), h, w)
            for k in range(max(len(regions) - tries, 0)):
                c &= regions[k]
            if valid is not None and valid.any():
                c &= valid
            n = int(c.sum())
            relaxed = tries > len(regions)  # every constraint dropped and still failing: take any non-empty block
            if (self._enough(n, h * w) and (valid is None or n >= self.tau)) or (relaxed and n > 0):
                return c
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, RETRIES
                if tries > len(regions) + 2:  # no placement reaches the region: its valid patches off the targets
                    if valid is None or not valid.any():
                        return _box(self.grid, *self._place(rng, h, w), h, w)
                    rest = np.logical_and.reduce([valid, *regions]) if regions else valid.copy()
                    return rest if rest.any() else valid.copy()

    def sample(self, seeds: Sequence[int], valid: np.ndarray | None = None, truncate: bool = True):
        """seeds [B] item seeds, valid [B, h, w] bool or None -> [MaskBatch] (truncate=False: the raw lists)."""
        g = batch_rng(seeds)
        th, tw = self.block_shape(g, self.target_scale, self.target_aspect)
        ch, cw = self.block_shape(g, self.context_scale, self.context_aspect)
        contexts, targets = [], []
        for i, s in enumerate(seeds):
            rng = item_rng(s)
            v = None if valid is None else valid[i].reshape(self.grid)
            blocks = [self._target(rng, th, tw, v) for _ in range(self.num_targets)]
            targets.append([flat_indices(t) for t, _ in blocks])
            contexts.append(flat_indices(self._context(rng, ch, cw, [~b for _, b in blocks], v)))
        if not truncate:
            return [(contexts, targets)]
        B, T = len(seeds), self.num_targets
        tgt = truncate_to_min([t for row in targets for t in row])
        return [MaskBatch(truncate_to_min(contexts), None, tgt.reshape(B, T, -1), None)]

    __call__ = sample


@dataclass
class VJepaMultiBlock(ComplementSettings):
    """V-JEPA `multiblock3d` semantics in 2-D: per generator, the union of blocks is the target, its complement
    the context (one mask pair per generator)."""

    def block_shape(self, rng: np.random.Generator, scale: float) -> tuple[int, int]:
        """Independent temporal (unused in 2-D), scale and aspect draws (V-JEPA's `_sample_block_size`)."""
        H, W = self.grid
        rng.random()  # temporal scale: a 2-D image is one frame
        keep = int(H * W * float(scale))  # the presets fix the scale (lo == hi), so its draw does not matter
        rng.random()
        a = self.aspect[0] + float(rng.random()) * (self.aspect[1] - self.aspect[0])
        h, w = int(round(math.sqrt(keep * a))), int(round(math.sqrt(keep / a)))
        return max(1, min(h, H)), max(1, min(w, W))

    def _pair(self, rng, n_blocks: int, h: int, w: int, valid) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.grid
        full = np.ones(self.grid, dtype=bool) if valid is None else valid
        tau = 1 if valid is None else max(1, min(self.tau, int(full.sum()) // 2))
        for _ in range(self.max_tries):
            tgt = np.zeros(self.grid, dtype=bool)
            for _ in range(n_blocks):
                top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
                tgt[top : top + h, left : left + w] = True
            tgt &= full
            ctx = full & ~tgt
            if ctx.sum() >= tau and tgt.sum() >= tau:
                return ctx, tgt
        flat = flat_indices(full)  # keep one patch in ten visible rather than loop forever
        ctx = np.zeros(self.grid, dtype=bool)
        ctx.flat[flat[: max(1, len(flat) // 10)]] = True
        return ctx, full & ~ctx

    def sample(self, seeds: Sequence[int], valid: np.ndarray | None = None, truncate: bool = True):
        out = []
        g_seed = batch_rng(seeds).integers(0, 2**63 - 1)
        rngs = [item_rng(s) for s in seeds]
        for n_blocks, scale in self.generators:
            h, w = self.block_shape(np.random.default_rng(g_seed), scale)  # generators share the step seed
            contexts, targets = [], []
            for i, rng in enumerate(rngs):
                ctx, tgt = self._pair(rng, n_blocks, h, w, None if valid is None else valid[i].reshape(self.grid))
                contexts.append(flat_indices(ctx))
                targets.append(flat_indices(tgt))
            if not truncate:
                out.append((contexts, [[t] for t in targets]))
            else:
                B = len(seeds)
                out.append(MaskBatch(truncate_to_min(contexts), None, truncate_to_min(targets).reshape(B, 1, -1), None))
        return out

    __call__ = sample


@dataclass
class MAERandom:
    """MAE's random masking: each image keeps int(N * (1 - ratio)) patches; lists are truncated to the batch
    minimum, which only matters when a region makes the pools differ."""

    grid: tuple[int, int]
    ratio: float = 0.75
    num_pairs = 1

    def sample(self, seeds: Sequence[int], valid: np.ndarray | None = None, truncate: bool = True):
        n = self.grid[0] * self.grid[1]
        contexts, targets = [], []
        for i, s in enumerate(seeds):
            pool = np.arange(n) if valid is None else flat_indices(valid[i].reshape(self.grid))
            if len(pool) < 2:
                pool = np.arange(n)
            perm = item_rng(s).permutation(pool)
            keep = min(max(int(len(pool) * (1 - self.ratio)), 1), len(pool) - 1)
            contexts.append(np.sort(perm[:keep]))
            targets.append(np.sort(perm[keep:]))
        if not truncate:
            return [(contexts, [[t] for t in targets])]
        B = len(seeds)
        return [MaskBatch(truncate_to_min(contexts), None, truncate_to_min(targets).reshape(B, 1, -1), None)]

    __call__ = sample
