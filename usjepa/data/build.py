"""From a DataConfig to a dataset: pick the source, read or generate its table, apply the split, check leakage."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from usjepa.data.dataset import UltrasoundDataset, resolve_labels
from usjepa.data.errors import DataError
from usjepa.data.spec import DATA_SOURCES
from usjepa.data.splits import SPLITS, apply_groups, check_patient_leakage, make_group_splits, require_groups

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("USJEPA_CACHE") or Path.home() / ".cache" / "usjepa")


def simulated_root(cfg) -> Path:
    """The cache folder of the simulated dataset this config describes: sim/<task>-<n>-<seed>[-<options hash>]."""
    name = f"{cfg.task}-{cfg.num_images}-{cfg.seed}"
    opts = (cfg.sim_size, cfg.sim_frames_per_patient, cfg.sim_dress)
    if cfg.sim_probe or cfg.sim_organ:
        opts += (cfg.sim_probe, cfg.sim_organ)
    if len(cfg.sim_lesion_size):
        opts += (tuple(float(v) for v in cfg.sim_lesion_size),)
    if [float(f) for f in cfg.split_fractions] != [0.7, 0.15, 0.15]:
        opts += (tuple(float(f) for f in cfg.split_fractions),)
    if opts != (256, 4, 0.5):
        name += "-" + hashlib.sha1(repr(opts).encode()).hexdigest()[:8]
    return cache_dir() / "sim" / name


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. inside a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_table(cfg) -> pd.DataFrame:
    """The full item table (all splits) of the configured source: its reader in DATA_SOURCES (usjepa.data.tables)."""
    if cfg.source not in DATA_SOURCES:
        raise DataError(f"unknown data.source '{cfg.source}'; use one of {DATA_SOURCES.names()}")
    return DATA_SOURCES.get(cfg.source)(cfg)


def has_labels(df: pd.DataFrame, task: str) -> bool:
    """Whether the table carries a class label or a regression target for `task` (placeholder columns do not count)."""
    labels, names, targets = resolve_labels(df, task)
    if np.isfinite(targets).any():
        return True
    return labels is not None and bool((labels >= 0).any()) and names != ["unknown"]  # "unknown": a filled default


def assign_splits(df: pd.DataFrame, cfg, where: str) -> pd.DataFrame:
    """Keep given splits (after the leakage check); otherwise split labelled data by patient / group
    (data.split_fractions; refused when the items have no group, unless data.groups=none). See usjepa.data.splits.

    Unlabelled data (a folder of images for pretraining) is all 'train': nothing is set aside for probe val/test
    splits it cannot serve; the trainer holds out only what validation asks for (train.val_fraction).
    """
    df = apply_groups(df, cfg.groups, where)
    given = df["split"].astype(str)
    has = df["patient_given"].to_numpy(bool) if "patient_given" in df else np.ones(len(df), bool)
    if (given != "").any():
        bad = sorted(set(given.unique()) - set(SPLITS) - {""})
        if bad:
            raise DataError(f"{where}: split values {bad} are not one of {SPLITS} (also accepted: validation)")
        require_groups(bool(has.all()), cfg.groups, where, "its split column")
        check_patient_leakage(df["patient_id"].where(has, "").tolist(), given.tolist(), where, df["path"].tolist(),
                              df["frame"].tolist())
        return df
    df = df.copy()
    if has_labels(df, cfg.task):  # a split that a probe or evaluation will read: groups must stay whole
        require_groups(bool(has.all()), cfg.groups, where, f"the {list(cfg.split_fractions)} train/val/test split")
        df["split"] = make_group_splits(df["patient_id"].tolist(), tuple(cfg.split_fractions), cfg.seed)
        check_patient_leakage(df["patient_id"].tolist(), df["split"].tolist(), where, df["path"].tolist(),
                              df["frame"].tolist())
        counts = df["split"].value_counts()
        log.info("%s: labelled, no split column: split by patient %s -> %s", where,
                 "/".join(f"{float(f):g}" for f in cfg.split_fractions),
                 ", ".join(f"{k} {int(counts.get(k, 0))}" for k in SPLITS))
    else:
        df["split"] = "train"
        log.info("%s: %d unlabelled items, all in 'train' (no val/test split is set aside for unlabelled data)",
                 where, len(df))
    return df


def build_dataset(cfg, split: str | None, img_size: tuple[int, int], augment: bool, seed: int = 0
                  ) -> UltrasoundDataset:
    """The configured data as a Dataset of one split ('train' / 'val' / 'test', or None for every item)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got '{split}'")
    where = cfg.manifest or cfg.root or str(simulated_root(cfg))
    if DATA_SOURCES.fact(cfg.source, "check"):  # e.g. shards prepared with this config's settings
        DATA_SOURCES.get(cfg.source, "check")(cfg, img_size)
    df = assign_splits(load_table(cfg), cfg, f"data ({cfg.source}: {where})")
    labels, names, targets = resolve_labels(df, cfg.task)
    df = df.assign(_label=labels if labels is not None else -1, _target=targets)
    if split is not None:
        avail = sorted(df["split"].unique().tolist())
        df = df[df["split"] == split]
        if df.empty:
            raise DataError(f"split '{split}' of {where} is empty (splits present: {avail}); use split=None or add "
                            "a split column")
    if DATA_SOURCES.fact(cfg.source, "dataset"):  # a source with its own Dataset (prepared shards)
        return DATA_SOURCES.get(cfg.source, "dataset")(df, cfg, tuple(img_size), augment, seed, names)
    return UltrasoundDataset(df, cfg, tuple(img_size), augment, seed, cfg.source, names)
