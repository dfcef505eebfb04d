"""`usjepa masks CONFIG`: draw masks exactly as training would and report the effective masking.

Training draws masks in the collator, once per micro-batch and rank, from the items' seeds (and, with region
conditioning, their fan masks). The preview builds the same collator and feeds it the seeds rank 0 gets for its
first micro-batches, so the figures are those of the run; every run writes them to masks.json at its start.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import torch

from usjepa.masks.report import format_report, mask_statistics, write_report
from usjepa.train.build import build_mask_collator
from usjepa.train.sampler import item_seed

if TYPE_CHECKING:
    from usjepa.config import PretrainConfig


def per_rank_batch(cfg: PretrainConfig, world: int | None = None) -> int:
    """Images one collator call sees: data.batch_size / (ranks x accumulation steps)."""
    if world is None:
        world = max(1, int(cfg.launch.nodes) * int(cfg.launch.tasks_per_node))
    return max(1, int(cfg.data.batch_size) // (world * int(cfg.optim.accum_steps)))


def _seed_batches(cfg: PretrainConfig, batch: int, batches: int, world: int) -> list[list[tuple[int, int]]]:
    """(position, item seed) of rank 0's first micro-batch of the first `batches` steps of epoch 0."""
    g = batch * world * int(cfg.optim.accum_steps)  # the global batch these micro-batches belong to
    return [[(p, item_seed(int(cfg.train.seed), 0, p)) for p in range(k * g, k * g + batch)] for k in range(batches)]


def _seeds_only_batch(keys: list[tuple[int, int]], cfg: PretrainConfig) -> dict:
    """What the collator needs when no region is used: the item seeds (images are irrelevant to the masks)."""
    h, w = (int(s) for s in cfg.model.img_size)
    return {"item_seed": torch.tensor([s for _, s in keys], dtype=torch.int64),
            "region": torch.ones(len(keys), h, w, dtype=torch.bool)}


def preview_masks(cfg: PretrainConfig, batch: int | None = None, batches: int = 8, world: int | None = None,
                  collator=None, items=None) -> dict:
    """Draw `batches` per-rank batches of masks as training would -> the report dict (see usjepa.masks.report).

    `items` (a SeededItems over the training set) is needed only with region conditioning, where masks depend
    on each image's fan; it is built from the config when missing.
    """
    world = world or max(1, int(cfg.launch.nodes) * int(cfg.launch.tasks_per_node))
    batch = batch or per_rank_batch(cfg, world)
    if batch < 1 or batches < 1:
        raise ValueError(f"--batch and --batches must be positive, got {batch} and {batches}")
    use_data = bool(cfg.mask.region.enabled)
    if collator is None:
        from usjepa.data.dataset import collate_skip_bad

        collator = build_mask_collator(cfg, base_collate=collate_skip_bad)
    if use_data and items is None:
        items = _training_items(cfg)
    drawn = []
    for keys in _seed_batches(cfg, batch, batches, world):
        if use_data:
            n = len(items)
            sample = collator.base_collate([items[(p % n, s)] for p, s in keys])
            if sample is None:
                continue
        else:
            sample = _seeds_only_batch(keys, cfg)
        seeds = sample["item_seed"].tolist()
        valid = None
        if collator.use_region:
            from usjepa.masks import patch_validity

            valid = patch_validity(sample["region"], collator.patch_size, collator.min_fraction).numpy()
        drawn.append(collator.sampler(seeds, valid))
    if not drawn:
        raise ValueError("every drawn item was unreadable; check the data (see the bad-item log)")
    grid = tuple(int(s) // int(cfg.model.patch_size) for s in cfg.model.img_size)
    return mask_statistics(drawn, grid, preset=str(cfg.mask.preset), sampler=str(cfg.mask.sampler), batch=batch,
                           world=world, region=bool(cfg.mask.region.enabled))


def _training_items(cfg: PretrainConfig):
    from usjepa.data import build_dataset
    from usjepa.train.build import holdout_split
    from usjepa.train.sampler import SeededItems

    ds = build_dataset(cfg.data, split="train", img_size=tuple(cfg.model.img_size), augment=cfg.data.augment,
                       seed=cfg.data.seed)
    frac = cfg.train.val_fraction if cfg.train.val_every > 0 else 0.0
    train_idx, _ = holdout_split(len(ds), getattr(ds, "patient_ids", None), frac, cfg.train.seed)
    return SeededItems(ds, train_idx)


def record_masks(cfg: PretrainConfig, collator, run_dir, world: int, items=None, batches: int = 8) -> dict:
    """Write masks.json (the run's effective masking) into the run folder; called once at the start of a run."""
    stats = preview_masks(cfg, per_rank_batch(cfg, world), batches, world, collator, items)
    write_report(stats, run_dir)
    return stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/pretrain/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mask.sampler=per_sample")
    p.add_argument("--batch", type=int, default=0,
                   help="images per collator call (default: data.batch_size / (ranks x accumulation steps))")
    p.add_argument("--batches", type=int, default=8, help="batches to draw (default 8)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_from_args(args: argparse.Namespace) -> int:
    from usjepa.config import ConfigError, load_spec
    from usjepa.data.errors import DataError

    cfg = load_spec(args.config, args.overrides)
    try:
        stats = preview_masks(cfg, args.batch or None, args.batches)
    except (ValueError, DataError) as e:  # bad --batch, or the data region conditioning needs is missing
        raise ConfigError(str(e)) from None
    print(json.dumps(stats, indent=2) if args.json else format_report(stats))
    return 0


__all__ = ["preview_masks", "record_masks", "per_rank_batch"]
