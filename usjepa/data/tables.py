"""One item-table reader per `data.source`: the targets `DATA_SOURCES` (usjepa.data.spec) registers.

Each reader takes the `data:` section and returns the full item table of that source (all splits; the columns of
`usjepa.data.sources.COLUMNS`, one row per frame). `usjepa.data.build.load_table` dispatches through the registry,
so a new source is a reader here (or in any importable module) plus one `DATA_SOURCES.register` line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from usjepa.data.errors import DataError
from usjepa.data.sources import read_manifest, read_ultrabench, scan_folder
from usjepa.data.spec import DATA_SOURCES

log = logging.getLogger(__name__)


def _frames(cfg) -> dict:
    return {"stride": cfg.frame_stride, "max_frames": cfg.max_frames}


def _root(cfg) -> str:
    if not cfg.root:
        raise DataError(f"data.source={cfg.source} needs data.root (the folder to read)")
    return cfg.root


def simulate_table(cfg) -> pd.DataFrame:
    """`simulate`: the simulated dataset in data.root (or the cache), generated there on first use."""
    from usjepa.data.build import _usable_cpus, simulated_root
    from usjepa.data.sim.simulate import simulate_cached, simulate_dataset

    kw = {"size": cfg.sim_size, "frames_per_patient": cfg.sim_frames_per_patient, "dress_prob": cfg.sim_dress,
          "probe": cfg.sim_probe or None, "organ": cfg.sim_organ or None,
          "lesion_size": list(cfg.sim_lesion_size) or None,
          "split_fractions": tuple(float(f) for f in cfg.split_fractions),
          "workers": int(cfg.sim_workers) or min(8, _usable_cpus())}
    root = Path(cfg.root) if cfg.root else simulated_root(cfg)
    manifest = root / "manifest.csv"
    if not manifest.exists():
        log.info("simulating %d %s frames (seed %d) into %s", cfg.num_images, cfg.task, cfg.seed, root)
        if root.exists() and any(root.iterdir()):
            simulate_dataset(root, cfg.num_images, cfg.task, cfg.seed, **kw)
        else:
            simulate_cached(root, cfg.num_images, cfg.task, cfg.seed, **kw)
    return read_manifest(str(manifest))


def manifest_table(cfg) -> pd.DataFrame:
    """`manifest`: data.manifest (paths relative to data.root when both are set), else data.root/manifest.csv."""
    path = cfg.manifest or (str(Path(cfg.root) / "manifest.csv") if cfg.root else "")
    if not path:
        raise DataError("data.source=manifest needs data.manifest (a CSV / Parquet file) or data.root holding "
                        "manifest.csv")
    return read_manifest(path, cfg.root if cfg.manifest else "", **_frames(cfg))


def files_table(cfg) -> pd.DataFrame:
    """`folder` / `dicom` / `video`: the files of the source's `kinds` (a registry fact) under data.root, or the
    single DICOM / video file data.root names."""
    root = _root(cfg)
    if Path(root).is_file():
        from usjepa.data.sources import _expand_frames, _finish

        return _expand_frames(_finish(pd.DataFrame({"path": [root]}), Path(root).parent.name), **_frames(cfg))
    kinds = set(DATA_SOURCES.fact(cfg.source, "kinds"))
    return scan_folder(root, kinds, label_from_folder=cfg.task == "folder", patient_regex=cfg.patient_regex,
                       **_frames(cfg))


def ultrabench_table(cfg) -> pd.DataFrame:
    """`ultrabench`: an UltraBench dataset folder (its own splits, validation carved by group)."""
    return read_ultrabench(_root(cfg), seed=cfg.seed, groups=cfg.groups)


def prepared_table(cfg) -> pd.DataFrame:
    """`prepared`: the shards' item table (settings are checked by build_dataset / config validation)."""
    from usjepa.data.shards import INDEX, read_meta

    root = _root(cfg)
    read_meta(root)
    return pd.read_parquet(Path(root) / INDEX)
