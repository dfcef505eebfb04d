"""`usjepa resubmit DIR`: submit again the runs of a run or sweep folder that ended without completing.

A run qualifies when it was submitted before, is not completed, and has no job queued or running (it failed,
was cancelled, timed out, ran out of requeues or was killed). Each run is submitted with the resolved
config.yaml in its folder, so it resumes from its latest.pt with the settings it started with; the runs of a
sweep folder go out together as one job array.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from launch.runfiles import LAUNCH_FILE, STATUS_FILE, SWEEP_FILE, atomic_write_json, read_json
from launch.status import find_runs
from launch.submit import Submission, active_job, is_probe_config, resolve_run_config, submit_run
from launch.sweep import submit_array


@dataclass
class ResubmitPlan:
    to_submit: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, the state it ended in)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, why it is left alone)


def plan_resubmit(path: str | Path) -> ResubmitPlan:
    """Sort the runs under `path` into those to submit again and those left alone (with the reason)."""
    plan = ResubmitPlan()
    for run in find_runs(Path(path)):
        status = read_json(run / STATUS_FILE) or {}
        launch = read_json(run / LAUNCH_FILE) or {}
        state = status.get("state") or ""
        busy = active_job(run)
        if state == "completed":
            plan.skipped.append((run, f"completed at step {status.get('step')}"))
        elif busy:
            plan.skipped.append((run, f"job {busy[0]} is {busy[1]}"))
        elif not launch and not status:
            plan.skipped.append((run, "never submitted"))
        elif not (run / "config.yaml").is_file():
            plan.skipped.append((run, "no config.yaml to submit again"))
        else:
            plan.to_submit.append((run, state or "ended before training started"))
    return plan


def _config_of(run: Path):
    """The run's own resolved config, pinned to the folder it is in now (it may have been moved)."""
    config = run / "config.yaml"
    key = "out_dir" if is_probe_config(config) else "train.out_dir"
    return resolve_run_config(config, [f"{key}={run.absolute()}"])


def resubmit(path: str | Path, cluster: str | None = None, dry_run: bool = False) -> tuple[Submission, ResubmitPlan]:
    """Submit the unfinished runs under `path` again (one job array for a sweep folder)."""
    path = Path(path)
    plan = plan_resubmit(path)
    cfgs = [_config_of(run) for run, _ in plan.to_submit]
    if not cfgs:
        return Submission(cluster or "", []), plan
    sweep = read_json(path / SWEEP_FILE)
    if sweep is not None and all("train" in c for c in cfgs):
        names = [run.name for run, _ in plan.to_submit]
        sub = submit_array(cfgs, names, path, cluster, dry_run, sweep=str(sweep.get("name") or path.name))
        if not dry_run:
            sweep.setdefault("submissions", []).append({
                "time": time.time(), "cluster": sub.cluster, "resubmit": True,
                "jobs": {n: str(j.job_id) for n, j in zip(names, sub.jobs)},
            })
            atomic_write_json(path / SWEEP_FILE, sweep)
        return sub, plan
    subs = [submit_run(cfg, cluster, dry_run) for cfg in cfgs]
    merged = Submission(subs[0].cluster, [d for s in subs for d in s.run_dirs], [j for s in subs for j in s.jobs],
                        "\n".join(s.script for s in subs if s.script) or None)
    return merged, plan
