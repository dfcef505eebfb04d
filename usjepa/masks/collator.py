"""Collation: a batch sampler turns the batch's item seeds (and fan masks) into index tensors per mask pair.

Two kinds of sampler plug in: the reference samplers (`usjepa.masks.reference`, per-batch shapes, truncation
to the batch minimum, the recipes' default) and `PerSampleSampler`, which wraps a per-image sampler
(`usjepa.masks.multiblock`) and pads the lists of a batch to its longest instead of truncating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class MaskBatch:
    """One mask pair for a batch. Padding slots hold index 0 and are False in the `*_valid` tensors.

    The real-token counts travel beside the masks as host integers (`*_lengths`, numpy): the models decide their
    attention layout from them (dense kernel, or xformers' block-diagonal lengths) without reading the device.
    """

    context: Tensor  # [B, Kc] long
    context_valid: Tensor | None  # [B, Kc] bool, None when nothing is padded
    targets: Tensor  # [B, T, Kt] long
    targets_valid: Tensor | None  # [B, T, Kt] bool
    context_lengths: np.ndarray | None = None  # [B] int64 on the host, None when nothing is padded
    targets_lengths: np.ndarray | None = None  # [B, T] int64 on the host

    def __post_init__(self) -> None:
        self.context_lengths = _host_lengths(self.context_valid, self.context_lengths, "context")
        self.targets_lengths = _host_lengths(self.targets_valid, self.targets_lengths, "targets")

    def _moved(self, fn) -> MaskBatch:
        mv = lambda t: None if t is None else fn(t)
        return MaskBatch(mv(self.context), mv(self.context_valid), mv(self.targets), mv(self.targets_valid),
                         self.context_lengths, self.targets_lengths)

    def to(self, device) -> MaskBatch:
        return self._moved(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> MaskBatch:
        """Called by a DataLoader with pin_memory=True, so that `to(device)` copies asynchronously."""
        return self._moved(lambda t: t.pin_memory())


def _host_lengths(valid: Tensor | None, lengths, what: str) -> np.ndarray | None:
    """The per-row real-token counts of a `*_valid` mask, as host integers; checked against the mask while it is on
    the CPU (where the collator builds it), so a layout can never disagree with its mask."""
    if valid is None:
        if lengths is not None:
            raise ValueError(f"{what}_lengths given without {what}_valid")
        return None
    if valid.device.type != "cpu":
        if lengths is None:
            raise ValueError(f"{what}_valid on {valid.device} needs {what}_lengths (host counts); build the MaskBatch "
                             "on the CPU, as the collator does, and move it with .to(device)")
        return np.asarray(lengths, dtype=np.int64)
    counts = valid.sum(-1).numpy().astype(np.int64)
    if lengths is not None and not np.array_equal(np.asarray(lengths).reshape(counts.shape), counts):
        raise ValueError(f"{what}_lengths disagree with the real tokens of {what}_valid")
    return counts


def _pad(rows: list[np.ndarray]) -> tuple[Tensor, Tensor | None]:
    k = max(len(r) for r in rows)
    out = np.zeros((len(rows), k), dtype=np.int64)
    valid = np.zeros((len(rows), k), dtype=bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return torch.from_numpy(out), (None if valid.all() else torch.from_numpy(valid))


def collate_masks(per_sample: list[list[tuple[np.ndarray, list[np.ndarray]]]]) -> list[MaskBatch]:
    """per_sample[b][pair] = (context idx, [target idx ...]) -> one MaskBatch per pair."""
    out = []
    for p in range(len(per_sample[0])):
        ctx, ctx_valid = _pad([s[p][0] for s in per_sample])
        T = len(per_sample[0][p][1])
        flat, flat_valid = _pad([t for s in per_sample for t in s[p][1]])  # [B*T, Kt]
        B, Kt = len(per_sample), flat.shape[1]
        tv = None if flat_valid is None else flat_valid.reshape(B, T, Kt)
        out.append(MaskBatch(ctx, ctx_valid, flat.reshape(B, T, Kt), tv))
    return out


def patch_validity(region: Tensor, patch_size: int, min_fraction: float = 0.0) -> Tensor:
    """[B, H, W] region masks -> [B, h, w] bool: a patch is valid when more than min_fraction of it is in the region."""
    frac = F.avg_pool2d(region.float().unsqueeze(1), patch_size).squeeze(1)
    return frac > min_fraction


class PerSampleSampler:
    """A per-image sampler (shapes drawn per block and image) as a batch sampler: lists are padded, not truncated.

    Every image's masks depend on its own seed only, so a DDP rank or an accumulation step sees exactly the masks
    a single process would; the effective masking is milder than the reference collators' (see the README).
    """

    def __init__(self, masker: Callable):
        self.masker = masker
        self.grid = masker.grid
        self.num_pairs = getattr(masker, "num_pairs", 1)

    def sample(self, seeds, valid: np.ndarray | None = None, truncate: bool = True) -> list:
        per_sample = []
        for i, s in enumerate(seeds):
            rng = np.random.default_rng([int(s) & ((1 << 63) - 1), 0x6D61736B])  # apart from augmentation
            per_sample.append(self.masker(rng, None if valid is None else valid[i]))
        if not truncate:  # the raw lists: [(contexts [B], targets [B][T])] per pair
            return [([s[p][0] for s in per_sample], [s[p][1] for s in per_sample]) for p in range(len(per_sample[0]))]
        return collate_masks(per_sample)

    __call__ = sample


class MaskCollator:
    """Wraps the data collate: adds `masks` (list of MaskBatch, one per mask pair) drawn from the items' seeds.

    Items carry `item_seed` (from the sampler) so that masks, like augmentations, are a pure function of
    (run seed, epoch, position): a resumed run sees exactly the masks of an uninterrupted one. The collator runs
    on what one rank loads for one micro-batch, so reference truncation acts on each rank's batch, as upstream.
    """

    def __init__(
        self,
        masker: Callable,
        patch_size: int,
        base_collate: Callable,
        use_region: bool = False,
        min_fraction: float = 0.0,
    ):
        self.sampler = masker if hasattr(masker, "sample") else PerSampleSampler(masker)
        self.patch_size = patch_size
        self.base_collate = base_collate
        self.use_region = use_region
        self.min_fraction = min_fraction

    def __call__(self, items: list) -> dict | None:
        batch = self.base_collate(items)
        if batch is None:
            return None
        seeds = batch["item_seed"].tolist()
        valid = patch_validity(batch["region"], self.patch_size, self.min_fraction).numpy() if self.use_region else None
        batch["masks"] = self.sampler(seeds, valid)
        return batch
