"""The launcher's files in a run folder: `launch.json` (written at submission) and `job_events.json`
(written by the job: starts and requeues). The trainer owns `status.json` and `metrics.csv`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LAUNCH_FILE = "launch.json"
EVENTS_FILE = "job_events.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
SWEEP_FILE = "sweep.json"
SUBMITIT_DIR = "submitit"


def atomic_write_json(path: Path, doc: Any) -> None:
    """Write JSON to a temp file beside `path` and rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON document at `path`, or None when it is missing or unreadable (a run folder being written)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_launch_record(run_dir: Path, **fields: Any) -> dict:
    """Record how the run was submitted (cluster, job id, log files, submission id, sweep membership)."""
    doc = {"submitted": time.time(), "host": socket.gethostname(), **fields}
    atomic_write_json(Path(run_dir) / LAUNCH_FILE, doc)
    return doc


def read_events(run_dir: Path) -> dict:
    doc = read_json(Path(run_dir) / EVENTS_FILE) or {}
    doc.setdefault("starts", [])
    doc.setdefault("requeues", [])
    return doc


def record_event(run_dir: Path, kind: str, **fields: Any) -> dict:
    """Append a `start` or `requeue` event (rank 0 of the job only) and return the whole document."""
    if kind not in ("start", "requeue"):
        raise ValueError(f"unknown job event kind '{kind}' (start | requeue)")
    doc = read_events(run_dir)
    doc[f"{kind}s"].append({"time": time.time(), "host": socket.gethostname(), **fields})
    atomic_write_json(Path(run_dir) / EVENTS_FILE, doc)
    return doc


def requeue_count(run_dir: Path, submission_id: str | None = None) -> int:
    """Requeues recorded in the run folder, all of them or only those of one submission."""
    events = read_events(run_dir)["requeues"]
    if submission_id is None:
        return len(events)
    return sum(1 for e in events if e.get("submission") == submission_id)


def link_logs(run_dir: Path, stdout: Path, stderr: Path) -> None:
    """Point `stdout.log` / `stderr.log` in the run folder at submitit's log files (relative links)."""
    for name, target in (("stdout.log", stdout), ("stderr.log", stderr)):
        link = Path(run_dir) / name
        rel = os.path.relpath(Path(target).absolute(), Path(run_dir).absolute())
        try:
            if link.is_symlink() or link.exists():
                if os.readlink(link) == rel:
                    continue
                link.unlink()
            link.symlink_to(rel)
        except OSError:  # file systems without symlinks: launch.json still names the files
            pass


def read_yaml_file(path: str | Path, what: str, examples: str) -> object:
    """A YAML file's plain content; a missing or unparsable file is a ConfigError naming it."""
    from omegaconf import OmegaConf

    from usjepa.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' not found; see {examples} for examples")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # YAML syntax errors carry the line
        raise ConfigError(f"cannot parse {what} '{path}': {e}") from None
