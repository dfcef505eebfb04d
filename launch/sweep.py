"""Sweeps: a base config plus a grid (or a list) of override sets, submitted as ONE SLURM job array.

A sweep file::

    base: ../pretrain/salt_vit_tiny_sim.yaml   # relative to the sweep file
    name: lr_x_mask                            # optional; default: the sweep file's name
    out_dir: runs/sweeps/lr_x_mask             # optional; default: runs/sweeps/<name>
    overrides: [train.steps=20]                # optional; applied to every member
    grid:                                      # the cartesian product of these lists ...
      optim.lr: [1.0e-3, 5.0e-4]
      mask.preset: [usjepa, ijepa]
    # runs: [[optim.lr=1e-3], {optim.lr: 5e-4, mask.preset: ijepa}]   # ... or an explicit list of sets

Each member trains in `<out_dir>/<name from its overrides>` with its resolved config there. Submitting the
same sweep again skips members whose status.json says completed (and those still queued) and resumes
the others from their latest.pt.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from launch.executor import InProcessJob, check_launch, job_name_for, make_executor, render_sbatch
from launch.job import TrainJob
from launch.runfiles import (
    LAUNCH_FILE,
    STATUS_FILE,
    SUBMITIT_DIR,
    SWEEP_FILE,
    atomic_write_json,
    read_json,
    read_yaml_file,
)
from launch.submit import Submission, _record, active_job, completed_run, launch_overrides
from usjepa.config import ConfigError, load_config, save_run_config, to_dict

logger = logging.getLogger(__name__)

SWEEP_KEYS = ("base", "name", "out_dir", "overrides", "grid", "runs")
MAX_NAME = 120


@dataclass
class SweepMember:
    name: str
    overrides: list[str]  # the member's own overrides (the sweep-wide ones are not repeated here)


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: Path
    out_dir: Path
    overrides: list[str] = field(default_factory=list)
    members: list[SweepMember] = field(default_factory=list)


def format_value(value: Any) -> str:
    """A YAML value as it must appear on the right of `key=value` (OmegaConf dotlist syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def expand_grid(grid: dict[str, list]) -> list[list[str]]:
    """{'a': [1, 2], 'b': [x, y]} -> [[a=1, b=x], [a=1, b=y], [a=2, b=x], [a=2, b=y]] (file order)."""
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"grid.{k} must be a non-empty list of values, got {v!r}")
        values.append(v)
    return [[f"{k}={format_value(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def member_name(overrides: list[str]) -> str:
    """A folder name from a member's overrides: 'optim.lr=0.001,mask.preset=ijepa' (file-system safe)."""
    if not overrides:
        return "base"
    text = ",".join(overrides)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(name) > MAX_NAME or name in (".", ".."):
        name = name[: MAX_NAME - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return name


def _normalise_run(item: Any, i: int, where: str) -> list[str]:
    if isinstance(item, dict):
        return [f"{k}={format_value(v)}" for k, v in item.items()]
    if isinstance(item, str):
        item = [item]
    if isinstance(item, list) and all(isinstance(s, str) and "=" in s for s in item):
        return list(item)
    raise ConfigError(f"runs[{i}] in '{where}' must be a list of key=value strings or a mapping, got {item!r}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; members are named but not yet validated against the config schema."""
    path = Path(path)
    data = read_yaml_file(path, "sweep file", "configs/sweep/")
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file '{path}' must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    for k in data:
        if k not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(k), SWEEP_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(SWEEP_KEYS)}"
            raise ConfigError(f"unknown key '{k}' in sweep file '{path}'{hint}")
    if "base" not in data:
        raise ConfigError(f"sweep file '{path}' needs `base:` (the config every member starts from)")
    if ("grid" in data) == ("runs" in data):
        raise ConfigError(f"sweep file '{path}' needs exactly one of `grid:` (cartesian product) or `runs:` (a list)")
    if "grid" in data:
        if not isinstance(data["grid"], dict) or not data["grid"]:
            raise ConfigError(f"`grid:` in '{path}' must map config keys to lists of values")
        sets = expand_grid(data["grid"])
    else:
        if not isinstance(data["runs"], list) or not data["runs"]:
            raise ConfigError(f"`runs:` in '{path}' must be a non-empty list of override sets")
        sets = [_normalise_run(item, i, str(path)) for i, item in enumerate(data["runs"])]
    common = data.get("overrides") or []
    if not isinstance(common, list) or not all(isinstance(s, str) and "=" in s for s in common):
        raise ConfigError(f"`overrides:` in '{path}' must be a list of key=value strings")
    name = str(data.get("name") or path.stem)
    members = [SweepMember(member_name(s), s) for s in sets]
    seen: dict[str, list[str]] = {}
    for m in members:
        if m.name in seen:
            raise ConfigError(f"sweep '{path}' has two members named '{m.name}' ({seen[m.name]} and "
                              f"{m.overrides}); make the override sets distinct")
        seen[m.name] = m.overrides
        touched = [o.split("=", 1)[0].lstrip("+") for o in m.overrides]
        bad = [k for k in touched if k.startswith("launch.") or k == "train.out_dir"]
        if bad:
            raise ConfigError(f"sweep '{path}' member '{m.name}' overrides {', '.join(bad)}: the members of one "
                              "job array share launch settings and get their own train.out_dir; "
                              "put launch.* under `overrides:`")
    base = (path.parent / str(data["base"])).resolve()
    out_dir = Path(str(data.get("out_dir") or f"runs/sweeps/{name}")).expanduser().absolute()
    return SweepSpec(path, name, base, out_dir, list(common), members)


def member_configs(spec: SweepSpec, extra_overrides: list[str] | tuple[str, ...] = (),
                   launch_file: str | Path | None = None) -> list[DictConfig]:
    """Every member's resolved config (all validated before anything is submitted)."""
    pre = launch_overrides(launch_file) if launch_file else []
    cfgs = []
    for m in spec.members:
        run_dir = spec.out_dir / m.name
        try:
            cfg = load_config(spec.base, [*pre, *spec.overrides, *extra_overrides, *m.overrides,
                                          f"train.out_dir={run_dir}"])
        except ConfigError as e:
            raise ConfigError(f"sweep '{spec.path}' member '{m.name}': {e}") from None
        cfgs.append(cfg)
    return cfgs


@dataclass
class SweepPlan:
    to_submit: list[tuple[SweepMember, DictConfig]]
    skipped: list[tuple[SweepMember, str]]  # (member, reason)


def plan_sweep(spec: SweepSpec, cfgs: list[DictConfig], failed_only: bool = False) -> SweepPlan:
    """Which members still need a job: not completed and not already queued or running.

    `failed_only` also leaves out members that were never submitted (a re-run of just the ones that ended early).
    """
    plan = SweepPlan([], [])
    for m, cfg in zip(spec.members, cfgs):
        run_dir = Path(cfg.train.out_dir)
        status = read_json(run_dir / STATUS_FILE) or {}
        busy = active_job(run_dir)
        done = completed_run(run_dir, cfg)
        if done:
            plan.skipped.append((m, done))
        elif busy:
            plan.skipped.append((m, f"job {busy[0]} is {busy[1]}"))
        elif failed_only and not status and not (run_dir / LAUNCH_FILE).exists():
            plan.skipped.append((m, "never submitted (--failed-only)"))
        else:
            plan.to_submit.append((m, cfg))
    return plan


def submit_array(cfgs: list[DictConfig], names: list[str], out_dir: Path, cluster: str | None = None,
                 dry_run: bool = False, sweep: str = "") -> Submission:
    """Submit resolved configs as ONE SLURM job array (a batch of local jobs; one after the other for debug).

    The launch settings of the first config hold for all (the members of one array share them); each member's
    run folder gets its config.yaml and launch.json. submitit's files go to `<out_dir>/submitit`.
    """
    launch = cfgs[0].launch
    cluster = cluster or launch.cluster
    job_name = launch.job_name or job_name_for(out_dir)
    folder = Path(out_dir) / SUBMITIT_DIR
    run_dirs = [Path(c.train.out_dir) for c in cfgs]
    if dry_run:
        script = render_sbatch(launch, folder, job_name, array_size=len(cfgs)) if cluster == "slurm" else None
        return Submission(cluster, run_dirs, script=script)
    submission_id = uuid.uuid4().hex[:12]
    fns = [TrainJob(to_dict(cfg), launch.max_requeues, submission_id) for cfg in cfgs]
    check_launch(launch, cluster)
    executor = None if cluster == "debug" else make_executor(launch, folder, cluster, job_name)
    for cfg in cfgs:
        save_run_config(cfg, cfg.train.out_dir)
    if executor is None:  # debug: one after the other, in this process, when their results are asked for
        jobs = [InProcessJob(fn, f"debug-{os.getpid()}-{i}") for i, fn in enumerate(fns)]
    else:
        with executor.batch():  # one sbatch --array on SLURM
            jobs = [executor.submit(fn) for fn in fns]
    for run_dir, name, job in zip(run_dirs, names, jobs):
        _record(run_dir, job, cluster, submission_id, **({"sweep": sweep, "member": name} if sweep else {}))
    return Submission(cluster, run_dirs, jobs)


def submit_sweep(spec: SweepSpec, cluster: str | None = None, dry_run: bool = False,
                 extra_overrides: list[str] | tuple[str, ...] = (),
                 launch_file: str | Path | None = None, failed_only: bool = False) -> tuple[Submission, SweepPlan]:
    """Submit the sweep's unfinished members as one job array (SLURM) or a batch (local / debug)."""
    cfgs = member_configs(spec, extra_overrides, launch_file)
    plan = plan_sweep(spec, cfgs, failed_only)
    cluster = cluster or cfgs[0].launch.cluster
    if not plan.to_submit:
        return Submission(cluster, []), plan
    sub = submit_array([c for _, c in plan.to_submit], [m.name for m, _ in plan.to_submit], spec.out_dir, cluster,
                       dry_run, sweep=spec.name)
    if not dry_run:
        _write_sweep_record(spec, plan, sub.jobs, cluster)
    return sub, plan


def _write_sweep_record(spec: SweepSpec, plan: SweepPlan, jobs: list, cluster: str) -> None:
    path = spec.out_dir / SWEEP_FILE
    doc = read_json(path) or {}
    doc.update(name=spec.name, sweep_file=str(spec.path.absolute()), base=str(spec.base), overrides=spec.overrides,
               members=[{"name": m.name, "overrides": m.overrides} for m in spec.members])
    doc.setdefault("submissions", []).append({
        "time": time.time(), "cluster": cluster,
        "jobs": {m.name: str(j.job_id) for (m, _), j in zip(plan.to_submit, jobs)},
        "skipped": {m.name: why for m, why in plan.skipped},
    })
    atomic_write_json(path, doc)
