"""The launcher's files in a run folder: `launch.json` (written at submission) and `job_events.json`
(written by the job: starts, requeues and stops). Thin wrappers over `usjepa.io.runfolder.RunFolder`, which
owns every file name and write of a run folder (the trainer's `status.json` and `metrics.csv` included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from usjepa.io.atomic import atomic_write_json as _atomic_write_json
from usjepa.io.runfolder import EVENTS, LAUNCH, METRICS, STATUS, RunFolder, read_json

LAUNCH_FILE = LAUNCH
EVENTS_FILE = EVENTS
STATUS_FILE = STATUS
METRICS_FILE = METRICS
SWEEP_FILE = "sweep.json"
SUBMITIT_DIR = "submitit"

__all__ = ["LAUNCH_FILE", "EVENTS_FILE", "STATUS_FILE", "METRICS_FILE", "SWEEP_FILE", "SUBMITIT_DIR",
           "atomic_write_json", "read_json", "write_launch_record", "read_events", "record_event",
           "requeue_count", "link_logs", "read_yaml_file"]


def atomic_write_json(path: Path, doc: Any) -> None:
    """Write JSON to a temp file beside `path` and rename it over `path` (readers never see half a file)."""
    _atomic_write_json(path, doc)


def write_launch_record(run_dir: Path, **fields: Any) -> dict:
    """Record how the run was submitted (cluster, job id, log files, submission id, sweep membership)."""
    return RunFolder(run_dir).write_launch(**fields)


def read_events(run_dir: Path) -> dict:
    return RunFolder(run_dir).read_events()


def record_event(run_dir: Path, kind: str, **fields: Any) -> dict:
    """Append a `start`, `requeue` or `stop` event (rank 0 of the job only) and return the whole document."""
    return RunFolder(run_dir).record_event(kind, **fields)


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
