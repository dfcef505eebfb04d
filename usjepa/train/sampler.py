"""A deterministic, resumable, rank-aware batch sampler that hands each item its own seed.

Epoch e draws a permutation (or weighted draws) from a generator seeded by (seed, e). With weights (balanced
sampling) an epoch is `epoch_items` draws with replacement: US-JEPA's sum over datasets of min(|D_i|, cap).
Global batch k of the epoch is split into `accum` micro-batches and each micro-batch into `world` rank shards,
so a run on W ranks with A accumulation steps sees exactly the items (and item seeds) of one process with the
same global batch (reference masks are truncated per micro-batch and rank, as upstream, so those differ).
Resuming is `start_step`: nothing is replayed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

_MIX = (1 << 61) - 1


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A seed for the item drawn at `position` of `epoch` (drives its augmentation and masks)."""
    return int((((seed * 1_000_003 + epoch) * 10_000_019 + position) * 2_654_435_761) % _MIX)


def balanced_epoch_items(groups: Sequence[str], cap: int | None) -> int:
    """US-JEPA's epoch: the sum over groups (datasets) of min(|group|, cap) samples (cap <= 0: no cap)."""
    _, counts = np.unique(np.asarray([str(g) for g in groups]), return_counts=True)
    return int(np.minimum(counts, cap).sum()) if cap and cap > 0 else int(counts.sum())


def epoch_length(dataset, train_idx: np.ndarray, balance: str, cap: int | None) -> int:
    """Samples per epoch: the training items, or with `data.balance` the capped group sizes of the training items."""
    attr = {"dataset": "datasets", "organ": "organs"}.get(str(balance or "none"))
    if attr is None or getattr(dataset, attr, None) is None:
        return len(train_idx)
    return balanced_epoch_items(np.asarray(getattr(dataset, attr), dtype=object)[train_idx], cap)


class ResumableBatchSampler:
    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        accum: int = 1,
        weights: np.ndarray | None = None,
        start_step: int = 0,
        total_steps: int | None = None,
        epoch_items: int | None = None,
    ):
        if global_batch % (world * accum):
            raise ValueError(
                f"data.batch_size={global_batch} must be divisible by world size ({world}) x "
                f"optim.accum_steps ({accum})"
            )
        if num_items < global_batch:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than one global batch ({global_batch}); "
                "lower data.batch_size or add data"
            )
        self.n = num_items
        # items drawn per epoch: every item once, or (weighted draws) the balanced epoch length
        self.epoch_items = num_items if (weights is None or not epoch_items) else int(epoch_items)
        if self.epoch_items < global_batch:
            raise ValueError(f"an epoch of {self.epoch_items} items is shorter than one global batch "
                             f"({global_batch}); lower data.batch_size or raise data.balance_cap")
        self.g = global_batch
        self.micro = global_batch // (world * accum)
        self.seed, self.rank, self.world, self.accum = seed, rank, world, accum
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.steps_per_epoch = self.epoch_items // global_batch
        self.start_step = start_step
        self.total_steps = total_steps

    def order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=g).numpy()
        return torch.multinomial(self.weights, self.epoch_items, replacement=True, generator=g).numpy()

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.steps_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        epoch, k = self.position(step)
        order = self.order(epoch)
        while self.total_steps is None or step < self.total_steps:
            if k == self.steps_per_epoch:
                epoch, k = epoch + 1, 0
                order = self.order(epoch)
            for a in range(self.accum):
                lo = k * self.g + a * self.micro * self.world + self.rank * self.micro
                yield [(int(order[p]), item_seed(self.seed, epoch, p)) for p in range(lo, lo + self.micro)]
            k += 1
            step += 1

    def __len__(self) -> int:
        total = self.total_steps if self.total_steps is not None else self.start_step + self.steps_per_epoch
        return max(total - self.start_step, 0) * self.accum


class SeededItems(torch.utils.data.Dataset):
    """Passes (index, item_seed) keys to the dataset and records the seed in the item (for the mask collator)."""

    def __init__(self, dataset, subset: np.ndarray | None = None):
        self.dataset = dataset
        self.subset = subset

    def __len__(self) -> int:
        return len(self.subset) if self.subset is not None else len(self.dataset)

    def __getitem__(self, key):
        idx, seed = key if isinstance(key, tuple) else (key, None)
        real = int(self.subset[idx]) if self.subset is not None else int(idx)
        item = self.dataset[(real, seed) if seed is not None else real]
        if item is None:
            return None
        item = dict(item)
        item["item_seed"] = torch.tensor(seed if seed is not None else real, dtype=torch.int64)
        return item
