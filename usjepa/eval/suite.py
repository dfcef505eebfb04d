"""`usjepa probe CONFIG [k=v ...]`: probe every encoder on every labelled dataset, one results table.

For each encoder: build it once (frozen), extract features of each dataset's splits once (cached on
disk), then run the protocol's settings (linear, few-shot, robustness, kNN, attentive) on those
features. Each finished setting appends a row to <out_dir>/rows.jsonl and the tables are rebuilt, so an
interrupted or requeued run resumes where it stopped and never leaves a partial table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from usjepa.data.spec import DATA_SOURCES
from usjepa.eval import protocols as P
from usjepa.eval.config import probe_spec
from usjepa.eval.encoders import ProbeEncoder, build_probe_encoder
from usjepa.eval.features import FeatureSet, dataset_identity, extract_features
from usjepa.eval.report import append_row, load_rows, write_tables
from usjepa.eval.spec import ProbeDatasetSpec, ProbeRunConfig, ProtocolConfig
from usjepa.eval.splits import DegenerateSplitError, cap_indices, carve, check_classes, check_no_leakage
from usjepa.io.runfolder import RunFolder
from usjepa.spec import plain

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    status: str  # completed | preempted
    out_dir: Path
    table: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)  # dataset name -> why it was not probed


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DatasetHandle:
    """A dataset spec opened once per run: its named splits (datasets, chosen indices, identities)."""

    def __init__(self, name: str, spec: ProbeDatasetSpec, protocol: ProtocolConfig, data_root: str):
        self.name, self.spec = name, spec
        self.img_size = tuple(spec.img_size or protocol.img_size)
        data = spec.data
        if data_root and data.root and not os.path.isabs(data.root):
            data = dataclasses.replace(data, root=os.path.join(data_root, data.root))
        self.data = dataclasses.replace(data, augment=False)
        self._parts: dict[str, tuple] = {}

    def part(self, split: str):
        """(dataset, indices, identity) of one named split, opened lazily."""
        if split not in self._parts:
            from usjepa.data import build_dataset

            ds = build_dataset(self.data, None if split == "all" else split, self.img_size, augment=False, seed=0)
            idx = cap_indices(len(ds), self.spec.max_items, seed=self.data.seed)
            self._parts[split] = (ds, idx, dataset_identity(self.data, split, self.img_size, ds, idx))
        return self._parts[split]

    def missing(self) -> str:
        """Why this dataset cannot be read at all (its folder or manifest does not exist), or ''."""
        d = self.data
        if DATA_SOURCES.fact(d.source, "generated", False):
            return ""  # generated on first use
        if DATA_SOURCES.fact(d.source, "reads_manifest", False):
            path = d.manifest or (os.path.join(d.root, "manifest.csv") if d.root else "")
            return "" if not path or os.path.exists(path) else f"its manifest {path} does not exist"
        return "" if not d.root or os.path.exists(d.root) else f"its folder {d.root} does not exist"

    def images(self, fs: FeatureSet, origin: np.ndarray) -> list[tuple[str, int]]:
        """(file, frame) of each row of features whose rows came from the named splits in `origin`."""
        out = []
        for split, idx in zip(origin, fs.index, strict=True):
            ds = self.part(split)[0]
            out.append((ds.paths[int(idx)], int(ds.table["frame"].iat[int(idx)])))
        return out

    def num_classes(self) -> int:
        for ds, _, _ in self._parts.values():
            n = getattr(ds, "num_classes", None)
            if n:
                return int(n)
        return 0


def _concat(parts: list[FeatureSet]) -> FeatureSet:
    if len(parts) == 1:
        return parts[0]
    cat = lambda xs: None if any(x is None for x in xs) else torch.cat(xs)  # noqa: E731
    return FeatureSet(torch.cat([p.mean for p in parts]), cat([p.cls for p in parts]), cat([p.tokens for p in parts]),
                      np.concatenate([p.label for p in parts]), np.concatenate([p.target for p in parts]),
                      np.concatenate([p.index for p in parts]), sum((p.patient_id for p in parts), []))


class SuiteRunner:
    """Runs one probe config; see the module docstring."""

    def __init__(self, cfg: ProbeRunConfig | Any, should_stop: Callable[[], bool] | None = None):
        self.cfg = cfg = probe_spec(cfg)
        self.p = cfg.protocol
        self.out_dir = Path(cfg.out_dir)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out_dir / "feature_cache"
        self.device = resolve_device(cfg.device)
        self.should_stop = should_stop or (lambda: False)
        self.handles = {n: DatasetHandle(n, s, self.p, cfg.data_root) for n, s in cfg.datasets.items()}
        self.skipped: dict[str, str] = {}
        for name, h in list(self.handles.items()):
            why = h.missing()
            if why:
                self._skip(name, why, f"point data_root (or datasets.{name}.data.root) at it")
        self.done = {self._done_key(r) for r in load_rows(self.out_dir)} if cfg.resume else set()

    # ------------------------------------------------------------------ bookkeeping
    def _skip(self, name: str, why: str, fix: str) -> None:
        """Leave a dataset out of this run with one log line (an error under strict=true)."""
        msg = f"dataset '{name}': {why}; {fix}, drop it with ~datasets.{name} (or select_datasets=[...])"
        if self.cfg.strict:
            from usjepa.config import ConfigError

            raise ConfigError(msg + ", or set strict=false to skip it")
        log.warning("skipping %s (strict=true makes this an error)", msg)
        self.skipped[name] = why
        self.handles.pop(name, None)

    def notes(self) -> list[str]:
        """Lines for the foot of results.md: the datasets this run left out and why."""
        return [f"Skipped {len(self.skipped)} of {len(self.cfg.datasets)} datasets: "
                + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())] if self.skipped else []

    @staticmethod
    def _done_key(r: dict) -> tuple:
        return (r.get("encoder"), r.get("encoder_id"), r.get("task"), r.get("probe"), r.get("setting"),
                r.get("protocol_hash"))

    def protocol_hash(self, task: str) -> str:
        """What a result depends on: the protocol (less the switches that only add settings) and the dataset."""
        p = plain(self.p)
        for k in ("few_shot", "robustness", "corruptions", "severities", "attentive", "knn"):
            p.pop(k)
        d = {"protocol": p, "dataset": plain(self.cfg.datasets[task])}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def settings(self) -> list[tuple[str, str, str, object]]:
        """(probe, setting name, what to run, its argument) for every setting the protocol asks for, in run order."""
        s = [("linear", "full", "full", None)]
        s += [("linear", f"fewshot_{f:g}", "fewshot", float(f)) for f in self.p.few_shot]
        if self.p.robustness:
            s += [("linear", f"{c}_s{v}", "robust", (c, int(v))) for c in self.p.corruptions for v in self.p.severities]
        if self.p.knn:
            s.append(("knn", "full", "knn", None))
        if self.p.attentive:
            s.append(("attentive", "full", "attentive", None))
        return s

    # ------------------------------------------------------------------ features and splits
    def _features(self, enc: ProbeEncoder, h: DatasetHandle, split_expr: str, corruption: str = "",
                  severity: int = 0, only: np.ndarray | None = None) -> tuple[FeatureSet, np.ndarray]:
        """Features of 'a+b' (a union of named splits), and the split name of every row."""
        parts, origin = [], []
        last_k = max(self.p.last_k) if enc.use_intermediate else 1
        for split in split_expr.split("+"):
            ds, idx, did = h.part(split)
            if only is not None:  # a corrupted re-extraction of chosen items of this split
                idx = only[only[:, 0] == split, 1].astype(np.int64) if len(only) else idx[:0]
                if not len(idx):
                    continue
                did = dataset_identity(h.data, split, h.img_size, ds, idx)
            fs = extract_features(enc, ds, idx, last_k=last_k, want_tokens=self.p.attentive and not corruption,
                                  corruption=corruption, severity=severity, corruption_seed=h.data.seed,
                                  batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                                  device=self.device, cache_dir=self.cache_dir, data_id=did)
            parts.append(fs)
            origin += [split] * len(fs)
        return _concat(parts), np.asarray(origin, dtype=object)

    def splits(self, enc: ProbeEncoder, h: DatasetHandle) -> tuple[P.ProbeSplits, np.ndarray]:
        """Train / val / test features (carved where asked, leakage-checked), and (split, index) of each test row."""
        s, kind = h.spec.splits, h.spec.label_kind
        train, train_origin = self._labelled(*self._features(enc, h, s.train), kind)
        if s.test:
            test, test_origin = self._labelled(*self._features(enc, h, s.test), kind)
        else:  # carve test out of train, whole patients / videos at a time
            keep, cut = self._carve(h, train, "test", h.spec.test_size, h.data.seed + 1)
            test, test_origin = train.subset(cut), train_origin[cut]
            train, train_origin = train.subset(keep), train_origin[keep]
        if s.val:
            val, val_origin = self._labelled(*self._features(enc, h, s.val), kind)
        else:
            keep, cut = self._carve(h, train, "val", h.spec.val_size, h.data.seed)
            val, val_origin = train.subset(cut), train_origin[cut]
            train, train_origin = train.subset(keep), train_origin[keep]
        for part, fs in (("train", train), ("val", val), ("test", test)):
            if len(fs) == 0:
                what = "a class label" if kind == "classification" else "a continuous target"
                raise ValueError(f"dataset '{h.name}': no item of its {part} split has {what} (data.task="
                                 f"'{h.data.task}', label_kind={kind}); check datasets.{h.name}.data.task")
            if kind == "classification":
                check_classes(fs.label, part, f"dataset '{h.name}'")
        parts = {"train": (train, train_origin), "val": (val, val_origin), "test": (test, test_origin)}
        check_no_leakage({k: fs.patient_id for k, (fs, _) in parts.items()},
                         {k: h.images(fs, o) for k, (fs, o) in parts.items()}, where=f"dataset '{h.name}'")
        sizes = [len(train), len(val), len(test)]
        if h.spec.expected_sizes and sizes != list(h.spec.expected_sizes):
            log.warning("dataset '%s': train/val/test sizes %s differ from the expected %s", h.name, sizes,
                        list(h.spec.expected_sizes))
        ncls = 0
        if kind == "classification":
            ncls = h.num_classes() or int(max(train.label.max(), val.label.max(), test.label.max())) + 1
        origin = np.stack([test_origin, test.index.astype(object)], 1)  # [N_test, 2]: split name, dataset index
        return P.ProbeSplits(train, val, test, kind, ncls), origin

    def _carve(self, h: DatasetHandle, train: FeatureSet, part: str, size: float, seed: int):
        """(kept, carved) rows of train: `size` items or a share, whole patients / videos at a time."""
        from usjepa.config import ConfigError

        try:
            return carve(self._y(train, h.spec.label_kind), train.patient_id, size, seed=seed,
                         where=f"dataset '{h.name}' (datasets.{h.name}.{part}_size={size:g})")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @staticmethod
    def _y(fs: FeatureSet, kind: str) -> np.ndarray:
        return fs.label if kind == "classification" else fs.target

    @staticmethod
    def _labelled(fs: FeatureSet, origin: np.ndarray, kind: str) -> tuple[FeatureSet, np.ndarray]:
        keep = fs.label >= 0 if kind == "classification" else np.isfinite(fs.target)
        if keep.all():
            return fs, origin
        rows = np.flatnonzero(keep)
        return fs.subset(rows), origin[rows]

    # ------------------------------------------------------------------ the loop
    def _status(self, state: str, error: str | None = None) -> None:
        """status.json in the trainer's format (step = finished result rows), so `usjepa status` follows probes."""
        total = len(self.cfg.encoders) * len(self.handles) * len(self.settings())
        done = sum(1 for k in self.done if k[0] in self.cfg.encoders and k[2] in self.handles)
        RunFolder(self.out_dir).write_status(state=state, step=min(done, total), total_steps=total, error=error,
                                             last_ckpt=None, skipped_datasets=self.skipped)

    def run(self) -> ProbeResult:
        from usjepa.config import save_run_config

        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(self.cfg, self.out_dir)
        self._status("running")
        status = "completed"
        try:
            for enc_name, spec in self.cfg.encoders.items():
                if self.should_stop():
                    status = "preempted"
                    break
                enc = build_probe_encoder(enc_name, spec, self.cfg.encoders, self.device)
                for task in list(self.handles):
                    if not self._run_pair(enc, task):
                        status = "preempted"
                        break
                del enc
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if status == "preempted":
                    break
        except BaseException as e:
            self._status("failed", f"{type(e).__name__}: {e}")
            raise
        table = write_tables(self.out_dir, plot=self.cfg.plot, notes=self.notes())
        self._status(status)
        log.info("%s: %d result rows in %s", status, len(table), self.out_dir / "results.csv")
        for line in self.notes():
            log.warning(line)
        return ProbeResult(status, self.out_dir, table, dict(self.skipped))

    def _run_pair(self, enc: ProbeEncoder, task: str) -> bool:
        """All settings of one encoder on one dataset; False when a stop was requested."""
        h = self.handles[task]
        phash = self.protocol_hash(task)
        todo = [t for t in self.settings() if (enc.name, enc.identity[:16], task, t[0], t[1], phash) not in self.done]
        if not todo:
            log.info("%s / %s: all settings already in %s; skipping", enc.name, task, self.out_dir)
            return True
        try:
            splits, test_origin = self.splits(enc, h)
        except DegenerateSplitError as e:
            self._skip(task, str(e).split(": ", 1)[-1].split(";")[0], "fix its splits")
            return True
        y_test = splits.y(splits.test)
        heads = None  # the full-data linear heads, shared by the robustness settings
        for probe, setting, what, arg in todo:
            if self.should_stop():
                return False
            t0 = time.time()
            if what in ("full", "robust") and heads is None:
                heads = P.run_linear(splits, self.p, self.device)
            if what == "full":
                results = heads
            elif what == "robust":
                results = P.run_robustness(heads, self._corrupted(enc, h, splits, test_origin, *arg), splits, self.p)
            elif what == "fewshot":
                results = P.run_few_shot(splits, self.p, self.device, arg)
            elif what == "knn":
                results = P.run_knn(splits, self.p)
            else:
                results = P.run_attentive(splits, self.p, self.device)
            row = P.aggregate(results, y_test, splits, self.p.bootstrap)
            row.update(encoder=enc.name, encoder_kind=enc.kind, encoder_id=enc.identity[:16], task=task, probe=probe,
                       setting=setting, protocol=self.p.preset, protocol_hash=phash,
                       n_train=int(np.mean([r.get("n_train", len(splits.train)) for r in results])),
                       n_val=len(splits.val), n_test=len(splits.test), seconds=round(time.time() - t0, 2),
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            append_row(self.out_dir, row)
            details = [{k: v for k, v in r.items() if k not in ("test_pred", "test_proba", "head", "grid", "model")}
                       for r in results]
            append_row(self.out_dir, {"encoder": enc.name, "task": task, "probe": probe, "setting": setting,
                                      "per_seed": details}, name="details.jsonl")
            self.done.add((enc.name, enc.identity[:16], task, probe, setting, phash))
            self._status("running")
            log.info("%s / %s / %s %s: %s %.4f ± %.4f [%.4f, %.4f] (%.1fs)", enc.name, task, probe, setting,
                     row["metric"], row["mean"], row["std"], row["ci_low"], row["ci_high"], row["seconds"])
            write_tables(self.out_dir, plot=False, notes=self.notes())  # the chart is drawn once, at the end
        return True

    def _corrupted(self, enc: ProbeEncoder, h: DatasetHandle, splits: P.ProbeSplits, origin: np.ndarray,
                   corruption: str, severity: int) -> FeatureSet:
        """Features of the same test items, corrupted before the encoder; checked to line up with the clean ones."""
        split_expr = "+".join(dict.fromkeys(origin[:, 0].tolist()))
        cfs, _ = self._features(enc, h, split_expr, corruption, severity, only=origin)
        if len(cfs) != len(splits.test) or not np.array_equal(cfs.index, splits.test.index):
            raise RuntimeError(f"the {corruption} test set of '{h.name}' does not line up with the clean one "
                               f"({len(cfs)} vs {len(splits.test)} items): did an item become unreadable?")
        return P.labelled(cfs, h.spec.label_kind)


def run_probe(cfg: ProbeRunConfig | Any, should_stop: Callable[[], bool] | None = None) -> ProbeResult:
    """Run a probe config (the spec, or `load_probe_config`'s DictConfig, checked here): features, probes,
    results.csv / results.md / results.png."""
    return SuiteRunner(cfg, should_stop).run()


# ----------------------------------------------------------------------------- CLI


HELP_EPILOG = """choosing datasets:
  select_datasets=[pocus,aul]   probe only these datasets of the config
  ~datasets.aul                 drop one dataset (or: datasets.aul=null); encoders the same way
  strict=true                   a dataset whose folder is missing (or whose splits have a single class) stops the
                                run; by default it is skipped with one line and counted in the summary
  datasets.NAME.val_size=0.1    carve val as a share of train (or a count of items), whole patients / videos
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = HELP_EPILOG
    parser.add_argument("config", help="probe suite YAML (see configs/probe/)")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. encoders.salt.path=runs/salt/latest.pt protocol.seeds=[0]")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_from_args(args: argparse.Namespace) -> int:
    from usjepa.config import ConfigError
    from usjepa.data import DataError
    from usjepa.eval.config import load_probe_config

    try:
        cfg = load_probe_config(args.config, args.overrides)
        if getattr(args, "print_config", False):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        res = run_probe(cfg)
    except (ConfigError, DataError, DegenerateSplitError) as e:  # data, leakage, split-size and degenerate errors
        if getattr(args, "verbose", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((res.out_dir / "results.md").read_text())
    if res.skipped:
        print(f"skipped {len(res.skipped)} dataset(s): " + "; ".join(f"{k} ({v})" for k, v in res.skipped.items()))
    print(f"{res.status}: {res.out_dir / 'results.csv'}")
    return 0 if res.status == "completed" else 3
