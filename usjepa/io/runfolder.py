"""The run folder (`train.out_dir`): the one owner of its file names and of every write into it.

| file | written by | when |
|---|---|---|
| `config.yaml`, `env.json`, `git_diff.patch` | `write_config` (submit and trainer) | every start |
| `resume_history.jsonl` | `write_config` | when a resumed run's settings differ from the saved ones |
| `launch.json`, `job_events.json` | the launcher | at submission / job start and requeue |
| `status.json` | the trainer (a probe suite: `usjepa.eval.suite`) | at start, checkpoints, the end, and on failure |
| `metrics.csv` | the trainer | one row per logged step |
| `latest.pt`, `step_N.pt`, `best.pt`, `encoder.safetensors` | the trainer | checkpoints and the export |
| `run.lock` | the trainer (and the SLURM job wrapper) | held for the whole run |

Every write goes through `usjepa.io.atomic`. `write_config` refuses a config whose settings differ from the run
already in the folder in any key outside RESUME_MAY_CHANGE, unless `train.resume=force`, and records every
accepted difference in `resume_history.jsonl` (a folder where no step was trained takes any settings).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from usjepa.errors import ConfigError
from usjepa.io.atomic import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    overwrite_in_place,
    temp_files_of,
)
from usjepa.io.lock import FolderBusy, FolderLock, describe_holder
from usjepa.spec import plain

CONFIG, ENV, GIT_DIFF, HISTORY = "config.yaml", "env.json", "git_diff.patch", "resume_history.jsonl"
STATUS, METRICS, LAUNCH, EVENTS = "status.json", "metrics.csv", "launch.json", "job_events.json"
LATEST, BEST, ENCODER = "latest.pt", "best.pt", "encoder.safetensors"
STEP_RE = re.compile(r"^step_(\d+)\.pt$")
DAMAGED_SUFFIX = ".damaged"

# Settings a resumed run may change: none of them changes what the run computes up to the step it resumes at.
# `train.steps` / `train.epochs` extend (or shorten) the run: the lr, weight-decay and EMA schedules are rebuilt
# for the new length, so from the resumed step on they follow the new cosine (see the README). `launch` moves the
# job (partition, time, nodes): a different world size gives the same global batches, equal up to float rounding.
# The large-run options place the same computation differently (sharded or not, compiled or not, activations kept
# or recomputed); checkpoints are the same file either way.
RESUME_MAY_CHANGE = (
    "train.steps", "train.epochs", "train.out_dir", "train.resume", "train.log_every", "train.ckpt_every",
    "train.keep_last", "train.progress", "train.threads", "train.probe_every", "train.val_batches",
    "train.sharding", "train.shard_teacher", "train.compile", "train.activation_checkpointing",
    "data.num_workers", "data.sim_workers", "launch",
)
RESUME_MODES = ("auto", "never", "force")
_RESUME_ALIASES = {"true": "auto", "false": "never", "auto": "auto", "never": "never", "force": "force"}


def resume_mode(value: Any) -> str:
    """`train.resume` as one of RESUME_MODES (true/false from older configs read as auto/never)."""
    mode = _RESUME_ALIASES.get(str(value).strip().lower())
    if mode is None:
        raise ConfigError(f"train.resume='{value}' is not one of {', '.join(RESUME_MODES)}")
    return mode


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: node}


def _may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESUME_MAY_CHANGE)


def config_changes(old: dict, new: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(changes that may differ on resume, changes that change the run): {dotted key: (old, new)}."""
    a, b = _flatten(old), _flatten(new)
    missing = "<absent>"
    diff = {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing)
            != b.get(k, missing)}
    neutral = {k: v for k, v in diff.items() if _may_change(k)}
    return neutral, {k: v for k, v in diff.items() if k not in neutral}


def describe_changes(changes: dict[str, tuple], limit: int = 8) -> str:
    items = [f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items()]
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _config_hash(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunFolder:
    """One run folder; methods are safe to call from rank 0 only (other ranks never write here)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = FolderLock(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ checkpoint names
    @staticmethod
    def step_name(step: int) -> str:
        return f"step_{int(step)}.pt"

    def step_files(self) -> list[tuple[int, Path]]:
        """(step, path) of every step_N.pt, newest first."""
        found = [(int(m.group(1)), p) for p in self.path.glob("step_*.pt") if (m := STEP_RE.match(p.name))]
        return sorted(found, reverse=True)

    def checkpoint_candidates(self) -> list[Path]:
        """Files a run can resume from, in the order to try them: latest.pt, then step_N.pt newest first."""
        latest = [self.path / LATEST] if (self.path / LATEST).exists() else []
        return latest + [p for _, p in self.step_files()]

    def set_aside(self, path: Path) -> Path:
        """Rename a damaged file to NAME.damaged (kept for inspection, out of the way of resume and rotation)."""
        target = path.with_name(path.name + DAMAGED_SUFFIX)
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{n}")
            n += 1
        os.replace(path, target)
        return target

    def clean_temp_files(self) -> list[Path]:
        """Remove temp files of checkpoints and exports that killed writers left (call while holding the lock)."""
        names = [LATEST, BEST, ENCODER, STATUS, METRICS] + [p.name for _, p in self.step_files()]
        stale = temp_files_of(self.path, names) + [p for p in self.path.glob(".step_*.pt.tmp*") if p.is_file()]
        for p in sorted(set(stale)):
            p.unlink(missing_ok=True)
        return sorted(set(stale))

    # ------------------------------------------------------------------ what the folder holds
    def run_state(self) -> list[str]:
        """Files that show a run has trained here (config.yaml aside: it is compared, not counted)."""
        names = [n for n in (LATEST, BEST, ENCODER, STATUS) if (self.path / n).exists()]
        if os.path.lexists(self.path / METRICS):
            names.append(METRICS)
        names += [p.name for _, p in self.step_files()]
        return names

    def has_trained(self) -> bool:
        """Whether any step was trained here: a checkpoint, an export, a metrics row, or a status past step 0."""
        if self.checkpoint_candidates() or (self.path / BEST).exists() or (self.path / ENCODER).exists():
            return True
        step = self.read_status().get("step")
        if isinstance(step, int) and step > 0:
            return True
        metrics = self.path / METRICS
        if not os.path.lexists(metrics):
            return False
        try:
            with open(metrics) as f:
                return sum(1 for line in f if line.strip()) > 1
        except OSError:  # a dangling link: rows of unknown count
            return True

    def saved_config(self) -> dict | None:
        path = self.path / CONFIG
        if not path.is_file():
            return None
        from omegaconf import OmegaConf

        try:
            doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:  # a damaged config.yaml is named, never silently replaced
            raise ConfigError(f"cannot read '{path}' ({str(e).splitlines()[0]}); restore it or move it away") from None
        return doc if isinstance(doc, dict) else None

    # ------------------------------------------------------------------ config, env, history
    def write_config(self, cfg: Any, baseline: dict | None = None, at_step: int | None = None) -> None:
        """Write config.yaml (resolved), git_diff.patch and env.json for a run that starts or resumes here.

        For a training config (one with a `train` section) the settings are first compared with `baseline`
        (the checkpoint's config) or else with the config.yaml already here: a difference outside
        RESUME_MAY_CHANGE is refused unless train.resume=force; accepted differences go to resume_history.jsonl.
        """
        from omegaconf import OmegaConf

        from usjepa.io.provenance import git_info, package_versions

        new = plain(cfg)
        if "train" in new:
            holder = self.lock.busy_holder()
            if holder is not None:
                raise FolderBusy(f"run folder '{self.path}' is in use by {describe_holder(holder)}; wait for that "
                                 "run to end (or cancel it), or point train.out_dir at another folder")
            self._check_and_record(new, self.saved_config() if baseline is None else baseline, at_step)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG, OmegaConf.to_yaml(OmegaConf.create(new)))
        info = git_info()
        atomic_write_text(self.path / GIT_DIFF, info.pop("dirty_diff"))
        meta = {"git": info, "versions": package_versions(), "argv": sys.argv, "host": platform.node()}
        atomic_write_json(self.path / ENV, meta)

    def _check_and_record(self, new: dict, old: dict | None, at_step: int | None) -> None:
        mode = resume_mode(new["train"].get("resume", "auto"))
        if mode == "never" and self.run_state():
            raise ConfigError(f"run folder '{self.path}' already holds a run ({', '.join(self.run_state()[:6])}) "
                              "and train.resume=never: point train.out_dir at a new folder")
        if old is None or not self.has_trained():  # nothing trained yet (a failed start): any settings will do
            return
        from usjepa.config import current_names

        old = current_names(old)
        neutral, changed = config_changes(old, new)
        if changed and mode != "force":
            raise ConfigError(
                f"run folder '{self.path}' holds a run with other settings: {describe_changes(changed)}. Use the "
                "same settings, another train.out_dir, or train.resume=force to continue it with the new ones "
                f"(recorded in {HISTORY})")
        if not (neutral or changed):
            return
        entry = {"time": time.time(), "host": platform.node(), "at_step": at_step, "mode": mode,
                 "from": _config_hash(old), "to": _config_hash(new),
                 "changed": {k: list(v) for k, v in {**neutral, **changed}.items()},
                 "trajectory_changed": sorted(changed)}
        history = self.read_history()
        if history and (history[-1].get("from"), history[-1].get("to")) == (entry["from"], entry["to"]):
            return  # the same change, already recorded (at submission, then again by the trainer)
        text = "".join(json.dumps(h, default=str) + "\n" for h in [*history, entry])
        atomic_write_text(self.path / HISTORY, text)

    def read_history(self) -> list[dict]:
        try:
            lines = (self.path / HISTORY).read_text().splitlines()
        except OSError:
            return []
        return [json.loads(ln) for ln in lines if ln.strip()]

    def update_env(self, **fields: Any) -> None:
        """Add fields to env.json (e.g. the effective precisions, known once the models are built)."""
        doc = read_json(self.path / ENV) or {}
        doc.update(fields)
        atomic_write_json(self.path / ENV, doc)

    # ------------------------------------------------------------------ status.json
    def write_status(self, **doc: Any) -> None:
        """status.json; when the atomic write fails (a full disk) the file is rewritten in place."""
        data = json.dumps({**doc, "updated": time.time()}, default=str)
        try:
            atomic_write_text(self.path / STATUS, data, fsync=False)
        except OSError:
            overwrite_in_place(self.path / STATUS, data.encode())

    def read_status(self) -> dict:
        return read_json(self.path / STATUS) or {}

    # ------------------------------------------------------------------ metrics.csv
    def metrics_path(self) -> Path:
        """metrics.csv, or the file it links to; a dangling link is refused (its rows would be lost)."""
        path = self.path / METRICS
        if path.is_symlink():
            target = path.resolve()
            if not target.exists():
                raise ConfigError(f"'{path}' is a link to '{os.readlink(path)}', which does not exist; restore "
                                  "that file or remove the link")
            return target
        return path

    def reset_metrics(self, fields: list[str], through_step: int) -> int:
        """Rewrite metrics.csv with its header and the rows up to `through_step` (a resumed run never duplicates a
        step); returns how many rows were dropped."""
        path = self.metrics_path()
        rows: list[dict] = []
        dropped = 0
        if path.exists():
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    if r.get("step") and r["step"].strip().isdigit() and int(r["step"]) <= through_step:
                        rows.append(r)
                    else:
                        dropped += 1
        with atomic_write(path, "w") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        return dropped

    def append_metrics(self, fields: list[str], row: dict) -> None:
        with open(self.metrics_path(), "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(row)

    # ------------------------------------------------------------------ launch.json, job_events.json
    def write_launch(self, **fields: Any) -> dict:
        doc = {"submitted": time.time(), "host": platform.node(), **fields}
        atomic_write_json(self.path / LAUNCH, doc)
        return doc

    def read_events(self) -> dict:
        doc = read_json(self.path / EVENTS) or {}
        for kind in ("starts", "requeues", "stops"):
            doc.setdefault(kind, [])
        return doc

    def record_event(self, kind: str, **fields: Any) -> dict:
        """Append a `start`, `requeue` or `stop` event (rank 0 of the job only); returns the whole document."""
        if kind not in ("start", "requeue", "stop"):
            raise ValueError(f"unknown job event kind '{kind}' (start | requeue | stop)")
        doc = self.read_events()
        doc[f"{kind}s"].append({"time": time.time(), "host": platform.node(), **fields})
        atomic_write_json(self.path / EVENTS, doc)
        return doc


def read_json(path: str | Path) -> dict | None:
    """The JSON document at `path`, or None when it is missing or unreadable (a run folder being written)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
