"""`usjepa status DIR`: one row per run in a run or sweep folder, from SLURM when reachable, else the folder.

`step` is the live step (the last row of metrics.csv), `ckpt` the step the run would resume from (status.json).
Requeues count the launcher's own requeues and SLURM restarts (an `scontrol requeue`, a node failure), which the
job records at every start (SLURM_RESTART_COUNT).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import pandas as pd

from launch.control import local_job_alive
from launch.runfiles import EVENTS_FILE, LAUNCH_FILE, METRICS_FILE, STATUS_FILE, read_events, read_json
from launch.submit import slurm_job_states

COLUMNS = ["run", "job_id", "state", "step", "ckpt_step", "total", "loss", "images_per_s", "since_ckpt", "requeues",
           "error"]
RUN_MARKERS = (STATUS_FILE, LAUNCH_FILE, EVENTS_FILE, "config.yaml")
FAILED_SLURM = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


def is_run_dir(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in RUN_MARKERS)


def find_runs(path: str | Path, max_depth: int = 3) -> list[Path]:
    """The run folders at or under `path` (a sweep folder holds one per member), sorted by name."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' is not a folder; give a run folder (train.out_dir) or a sweep folder")
    if is_run_dir(path) and not (path / "sweep.json").exists():
        return [path]
    found = []
    for root, dirs, _ in os.walk(path):
        depth = len(Path(root).relative_to(path).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "submitit")
        if depth >= max_depth:
            dirs[:] = []
        if Path(root) != path and is_run_dir(Path(root)):
            found.append(Path(root))
            dirs[:] = []
    return sorted(found)


def last_metrics(run_dir: Path) -> dict:
    """The last row of metrics.csv that has a loss (empty dict when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    last: dict = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("loss"):
                    last = row
    except OSError:
        return {}
    return last


def last_error_line(run_dir: Path, status: dict, launch: dict) -> str:
    """The last line of the run's error: status.json's message, else the job's stderr log."""
    err = status.get("error")
    if err:
        return str(err).strip().splitlines()[-1]
    for name in (launch.get("stderr"), Path(run_dir) / "stderr.log"):
        if not name:
            continue
        try:
            lines = [ln.strip() for ln in Path(name).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        flagged = [ln for ln in lines if "Error" in ln or "error:" in ln or "Exception" in ln]
        if flagged or lines:
            return (flagged or lines)[-1]
    return ""


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _live_step(status: dict, metrics: dict) -> int:
    """The newest step the run is known to have reached: metrics.csv's last row, else status.json's step."""
    steps = [_float(metrics.get("step")), _float(status.get("step"))]
    steps = [int(s) for s in steps if s == s]
    return max(steps) if steps else 0


def _ckpt_step(status: dict) -> float:
    """The step of the checkpoint the run resumes from (status.json's step is written at each save and at start)."""
    if status.get("ckpt_step") is not None:
        return _float(status["ckpt_step"])
    if status.get("state") in ("running", "preempted", "completed"):
        return _float(status.get("step"))
    return math.nan  # a failed run records the step it failed at, not its checkpoint's


def requeue_total(run_dir: Path) -> int:
    """Requeues of the run: per job id, the launcher's requeue events or SLURM's restart count, whichever is more."""
    events = read_events(run_dir)
    per_job: dict[str, int] = {}
    for e in events["requeues"]:
        key = str(e.get("job_id"))
        per_job[key] = per_job.get(key, 0) + 1
    for e in events["starts"]:
        key = str(e.get("job_id"))
        per_job[key] = max(per_job.get(key, 0), int(e.get("restart_count") or 0))
    return sum(per_job.values())


def run_state(launch: dict, status: dict, slurm: dict[str, str]) -> str:
    """SLURM's state when it knows the job; else the folder's, corrected for a local job that is gone."""
    job_id = str(launch.get("job_id") or "")
    if slurm.get(job_id):
        return slurm[job_id]
    state = status.get("state") or ("submitted" if launch else "unknown")
    if launch.get("cancelled") and state in ("running", "submitted", "preempted"):  # SLURM no longer knows it
        return "cancelled"
    if state in ("running", "submitted") and local_job_alive(launch) is False:
        return "cancelled" if launch.get("cancelled") else "stopped"  # killed without a word (kill -9, reboot)
    return state


def collect_status(path: str | Path, query_slurm: bool = True, now: float | None = None) -> pd.DataFrame:
    """A table of every job in a run or sweep folder (see COLUMNS); `since_ckpt` is in seconds."""
    path = Path(path)
    now = time.time() if now is None else now
    runs = find_runs(path)
    docs = []
    for run in runs:
        launch = read_json(run / LAUNCH_FILE) or {}
        docs.append((run, launch, read_json(run / STATUS_FILE) or {}))
    slurm_ids = [str(launch["job_id"]) for _, launch, _ in docs if launch.get("cluster") == "slurm"
                 and launch.get("job_id")]
    slurm = slurm_job_states(slurm_ids) if (query_slurm and slurm_ids) else {}
    rows = []
    for run, launch, status in docs:
        state = run_state(launch, status, slurm)
        metrics = last_metrics(run)
        last_ckpt = status.get("last_ckpt")
        failed = state.upper() in FAILED_SLURM or state in ("failed", "stopped") or status.get("state") == "failed"
        rows.append({
            "run": "." if run == path else str(run.relative_to(path)),
            "job_id": str(launch.get("job_id") or ""),
            "state": state,
            "step": _live_step(status, metrics),
            "ckpt_step": _ckpt_step(status),
            "total": int(status.get("total_steps") or 0),
            "loss": _float(metrics.get("loss")),
            "images_per_s": _float(metrics.get("images_per_s")),
            "since_ckpt": (now - float(last_ckpt)) if last_ckpt else math.nan,
            "requeues": requeue_total(run),
            "error": last_error_line(run, status, launch) if failed else "",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _age(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def format_status(df: pd.DataFrame) -> str:
    """The table as text: step/total, short ages, errors cut to one line."""
    if df.empty:
        return "no runs found"
    width = max(len(r) for r in df["run"])
    view = pd.DataFrame({
        "run": [r.ljust(width) for r in df["run"]],  # left-aligned names read better
        "job": df["job_id"], "state": df["state"],
        "step": [f"{s}/{t}" if t else str(s) for s, t in zip(df["step"], df["total"])],
        "ckpt": [str(int(c)) if c == c else "-" for c in df["ckpt_step"]],
        "loss": [f"{x:.4g}" if x == x else "-" for x in df["loss"]],
        "img/s": [f"{x:.1f}" if x == x else "-" for x in df["images_per_s"]],
        "since ckpt": [_age(x) for x in df["since_ckpt"]],
        "requeues": df["requeues"],
        "error": [e[:100] for e in df["error"]],
    })
    if not view["error"].any():
        view = view.drop(columns=["error"])
    return view.to_string(index=False)


def watch(path: str | Path, interval_s: float = 10.0, query_slurm: bool = True) -> None:
    """Refresh the table every `interval_s` seconds until interrupted (Ctrl-C)."""
    try:
        while True:
            text = format_status(collect_status(path, query_slurm=query_slurm))
            print("\033[2J\033[H" + time.strftime("%H:%M:%S") + f"  {path}\n" + text, flush=True)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
