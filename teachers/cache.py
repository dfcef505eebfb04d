"""Target cache: a teacher's (normalised) target tokens for a dataset's fixed views, precomputed into fp16 shards.

A SALT run with `teacher.cache=DIR` reads targets by item index instead of running the teacher. The
cache records an identity (teacher family, checkpoint SHA-256, layer, mean_last_k, final norm, preset
and options; image size and target grid; target_norm; dataset size, paths and view settings) and
refuses to serve a run whose identity differs, naming every field that does.

Layout of DIR: `cache.json` (identity + layout, written last), `rows.npy` (item index -> row, -1 when
the item was unreadable), `shard_00000.npy` ... (`[rows, N, D]`, float16 by default, memory-mapped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from teachers.loading import sha256_file
from teachers.registry import get_family, load_spec, spec_options
from usjepa.data.spec import VIEW_VERSION
from usjepa.io.atomic import atomic_write, atomic_write_json
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.spec import plain

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
META_FILE = "cache.json"
# data settings that change neither which items exist nor their fixed (un-augmented) views; every other
# data field (source, root, preprocess, resize, region, channels, ...) is part of the cache identity
NOT_VIEW_FIELDS = ("batch_size", "num_workers", "sim_workers", "augment", "crop_scale", "bad_item_threshold",
                   "augment_policy", "hflip", "vflip", "balance", "balance_cap", "balance_weights")


# ----------------------------------------------------------------------------- identity


def teacher_identity(teacher_cfg: Any) -> dict:
    """What makes two teachers give the same targets: family, weights (file hash), layer, norm, options."""
    family, checkpoint, opts = spec_options(teacher_cfg)
    fam = get_family(family)
    ident = {"family": family, "norm": opts.pop("norm", "") or fam.default_norm, "layer": opts.pop("layer", -1),
             "mean_last_k": opts.pop("mean_last_k", 1), "final_norm": opts.pop("final_norm", True),
             "options": json.loads(json.dumps(opts, sort_keys=True, default=str)),
             "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None}
    if fam.revision > 1:  # the family's tokens changed for the same file and options (e.g. DINOv2 registers)
        ident["family_revision"] = fam.revision
    return ident


def dataset_identity(dataset: Any, data_cfg: Any) -> dict:
    """Number of items, a hash of their paths (when the dataset lists them) and the settings that shape a view."""
    cfg = plain(data_cfg)
    paths = getattr(dataset, "paths", None)
    digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest() if paths is not None else None
    view = {k: v for k, v in sorted(cfg.items()) if k not in NOT_VIEW_FIELDS}
    return {"num_items": len(dataset), "paths_sha256": digest, "view": json.loads(json.dumps(view, default=str)),
            "view_version": VIEW_VERSION}


def cache_identity(teacher_cfg: Any, dataset: Any, data_cfg: Any, img_size: Sequence[int], grid: Sequence[int],
                   target_norm: str) -> dict:
    return {"format": CACHE_FORMAT, "teacher": teacher_identity(teacher_cfg), "img_size": [int(s) for s in img_size],
            "grid": [int(g) for g in grid], "target_norm": target_norm,
            "dataset": dataset_identity(dataset, data_cfg)}


def student_grid(cfg: Any) -> tuple[int, int]:
    h, w = (int(s) for s in cfg.model.img_size)
    return h // int(cfg.model.patch_size), w // int(cfg.model.patch_size)


def build_train_dataset(cfg: Any, split: str = "train"):
    """The dataset a SALT run trains on, with fixed views (augment=False)."""
    from usjepa.data import build_dataset

    return build_dataset(cfg.data, split=split, img_size=tuple(cfg.model.img_size), augment=False, seed=cfg.data.seed)


def expected_cache_identity(cfg: Any, dataset: Any = None, split: str = "train") -> dict:
    """The identity a pretrain config's run needs from its `teacher.cache` (pass `dataset` if already built)."""
    ds = dataset if dataset is not None else build_train_dataset(cfg, split)
    return cache_identity(cfg.teacher, ds, cfg.data, cfg.model.img_size, student_grid(cfg), cfg.objective.target_norm)


def identity_diff(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """Human-readable differences between two identity dicts (`teacher.layer: cache -1, this run 6`)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(stored) | set(wanted)):
            out += identity_diff(stored.get(k, "<absent>"), wanted.get(k, "<absent>"), f"{path}.{k}" if path else k)
        return out
    if path == "teacher.family" and isinstance(stored, str):  # a cache written under a family's former name
        from teachers.catalog import FAMILY_MODULES

        stored = FAMILY_MODULES.canonical(stored)
    return [] if stored == wanted else [f"{path}: cache {stored!r}, this run {wanted!r}"]


# ----------------------------------------------------------------------------- writing


def _collate(items: list) -> dict | None:
    """A batch of images and dataset indices; bad items (None) are dropped, None when all were bad."""
    from usjepa.data.dataset import collate_skip_bad  # here, not at the top: importing the cache stays light

    return collate_skip_bad([None if it is None else {"image": it["image"], "index": int(it["index"])}
                             for it in items])


class _ShardWriter:
    """Fills `shard_XXXXX.npy` files of `shard_size` rows each; each is renamed into place once full."""

    def __init__(self, out: Path, total: int, shard_size: int, shape: tuple[int, int], dtype: str):
        self.out, self.total, self.size, self.shape, self.dtype = out, total, shard_size, shape, dtype
        self.row = 0
        self.shards: list[dict] = []
        self._mm: np.memmap | None = None
        self._write: Any = None  # the open atomic write of the current shard

    def _next_shard(self) -> None:
        self._close()
        k = len(self.shards)
        rows = max(1, min(self.size, self.total - k * self.size))
        name = f"shard_{k:05d}.npy"
        self._write = atomic_write(self.out / name, mode=None, fsync=False)
        tmp = self._write.__enter__()
        self._mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(rows, *self.shape))
        self.shards.append({"file": name, "rows": rows})

    def _close(self) -> None:
        if self._mm is not None:
            self._mm.flush()
            self._mm = None
            self._write.__exit__(None, None, None)  # rename the full shard into place

    def write(self, block: np.ndarray) -> list[int]:
        """Append [b, N, D] rows; returns their global row numbers."""
        rows = []
        for r in block:
            shard, offset = divmod(self.row, self.size)
            if shard >= len(self.shards):
                self._next_shard()
            self._mm[offset] = r
            rows.append(self.row)
            self.row += 1
        return rows

    def finish(self) -> list[dict]:
        self._close()
        return self.shards


def build_cache(teacher_cfg: Any, data_cfg: Any, img_size: Sequence[int], out_dir: str | Path, target_norm: str,
                batch_size: int = 64, device: str | torch.device | None = None, grid: Sequence[int] | None = None,
                split: str = "train", dtype: str = "float16", shard_size: int = 1024, dataset: Any = None,
                progress: bool = True) -> Path:
    """Run the teacher once over the dataset's fixed views (int keys: no augmentation) and store its targets.

    `grid` is the student's patch grid the targets are resampled to (default: the teacher's own grid).
    An existing cache with the same identity is reused; one with another identity is never overwritten.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"cache dtype must be float16 or float32, got '{dtype}'")
    out = Path(out_dir)
    from usjepa.objectives.base import normalise_targets  # the objectives' own definition: cached == live targets

    if dataset is None:
        from usjepa.data import build_dataset

        dataset = build_dataset(data_cfg, split=split, img_size=tuple(img_size), augment=False, seed=data_cfg.seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = load_spec(teacher_cfg).to(device)
    grid = tuple(grid) if grid else teacher.grid(img_size)
    identity = cache_identity(teacher_cfg, dataset, data_cfg, img_size, grid, target_norm)
    meta_path = out / META_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = identity_diff(old.get("identity", {}), identity)
        if not diff:
            log.info("target cache %s is already built for this teacher and dataset; reusing it", out)
            return out
        raise CheckpointError(f"'{out}' already holds a target cache made with other settings "
                              f"({'; '.join(diff[:6])}); choose another output folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate,
                                         num_workers=int(getattr(data_cfg, "num_workers", 0) or 0))
    n_items = len(dataset)
    writer = _ShardWriter(out, n_items, shard_size, (grid[0] * grid[1], teacher.embed_dim), dtype)
    index_to_row: dict[int, int] = {}
    t0 = time.time()
    from tqdm import tqdm

    for batch in tqdm(loader, desc="teacher targets", unit="batch", disable=not progress):
        if batch is None:
            continue
        h = teacher.tokens_on_grid(batch["image"].to(device, non_blocking=True), grid)  # [B, N, D]
        block = normalise_targets(h, target_norm).cpu().numpy().astype(dtype)
        for idx, row in zip(batch["index"].tolist(), writer.write(block)):
            if idx in index_to_row:
                raise ValueError(f"dataset item index {idx} appears twice; cache rows are keyed by item['index']")
            index_to_row[idx] = row
    shards = writer.finish()
    rows = np.full(max(max(index_to_row, default=-1) + 1, n_items), -1, dtype=np.int64)
    for idx, row in index_to_row.items():
        rows[idx] = row
    np.save(out / "rows.npy", rows)
    meta = {"identity": identity, "dtype": dtype, "tokens": grid[0] * grid[1], "embed_dim": teacher.embed_dim,
            "shard_size": shard_size, "shards": shards, "items": n_items, "cached": len(index_to_row),
            "bad_items": n_items - len(index_to_row), "teacher": teacher.describe(),
            "seconds": round(time.time() - t0, 2), "created": time.time()}
    atomic_write_json(meta_path, meta, fsync=False)
    log.info("target cache: %d items (%d bad) -> %s in %.1fs", len(index_to_row), meta["bad_items"], out,
             meta["seconds"])
    return out


# ----------------------------------------------------------------------------- reading


class TargetCache:
    """Read-only view of a built cache; `get(indices)` -> float32 [B, N, D] targets (already normalised)."""

    def __init__(self, directory: str | Path, expected: dict | None = None):
        self.dir = Path(directory)
        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"'{self.dir}' is not a finished target cache (no {META_FILE}); build it with "
                                  "`usjepa teacher cache CONFIG`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("identity", {}).get("format") != CACHE_FORMAT:
            fmt = self.meta.get("identity", {}).get("format")
            raise CheckpointError(f"target cache '{self.dir}' has format {fmt}, "
                                  f"this version reads {CACHE_FORMAT}; rebuild it")
        if expected is not None:
            diff = identity_diff(self.meta["identity"], expected)
            if diff:
                raise CheckpointError(f"target cache '{self.dir}' was made for another setup: {'; '.join(diff)}. "
                                      "Rebuild it with `usjepa teacher cache CONFIG` or unset teacher.cache")
        self.rows = np.load(self.dir / "rows.npy", allow_pickle=False)
        self.shard_size = int(self.meta["shard_size"])
        self.shards = [np.load(self.dir / s["file"], mmap_mode="r", allow_pickle=False) for s in self.meta["shards"]]
        self.embed_dim = int(self.meta["embed_dim"])
        self.num_tokens = int(self.meta["tokens"])
        self.grid = tuple(self.meta["identity"]["grid"])

    def __len__(self) -> int:
        return int(self.meta["cached"])

    def get(self, indices: Tensor | Sequence[int]) -> Tensor:
        """Targets of dataset items `indices` ([B] item indices, as in batch["index"]) -> float32 [B, N, D]."""
        idx = (indices.detach().cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.rows)):
            raise KeyError(f"item index out of range for target cache '{self.dir}' ({len(self.rows)} items): "
                           f"{idx[(idx < 0) | (idx >= len(self.rows))][:5].tolist()}")
        rows = self.rows[idx]
        if (rows < 0).any():
            raise KeyError(f"items {idx[rows < 0][:5].tolist()} have no cached target in '{self.dir}' (they were "
                           "unreadable when it was built)")
        out = np.empty((len(idx), self.num_tokens, self.embed_dim), dtype=np.float32)
        shard_of = rows // self.shard_size
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            out[sel] = self.shards[int(s)][rows[sel] - s * self.shard_size]
        return torch.from_numpy(out)


# ----------------------------------------------------------------------------- CLI: usjepa teacher cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config",
                        help="pretrain config YAML (reads teacher:, data:, model.img_size, objective.target_norm)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.layer=-2 data.root=/data/us")
    parser.add_argument("--out", default="",
                        help="output folder (default: teacher.cache, else <train.out_dir>/teacher_cache)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="images per teacher forward (default: data.batch_size)")
    parser.add_argument("--device", default="", help="cuda | cpu (default: cuda when available)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--shard-size", type=int, default=1024, help="items per shard file")


def run_from_args(args: argparse.Namespace) -> int:
    from usjepa.config import ConfigError, load_spec

    try:
        cfg = load_spec(args.config, list(args.overrides))
        out = args.out or cfg.teacher.cache or str(Path(cfg.train.out_dir) / "teacher_cache")
        path = build_cache(cfg.teacher, cfg.data, tuple(cfg.model.img_size), out, cfg.objective.target_norm,
                           batch_size=args.batch_size or int(cfg.data.batch_size), device=args.device or None,
                           grid=student_grid(cfg), split=args.split, dtype=args.dtype, shard_size=args.shard_size)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"target cache ready: {path}  (train with teacher.cache={path} data.augment=false)")
    return 0
