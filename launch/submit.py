"""Submit one training run: resolve the config, write the run folder, hand a `TrainJob` to submitit."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf
from submitit.slurm.slurm import SlurmJob

from launch.executor import InProcessJob, check_launch, job_name_for, make_executor, render_sbatch
from launch.job import TrainJob
from launch.runfiles import LAUNCH_FILE, STATUS_FILE, SUBMITIT_DIR, read_json, read_yaml_file, write_launch_record
from usjepa.config import ConfigError, load_config, save_run_config, to_dict

logger = logging.getLogger(__name__)

ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                       "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SIGNALING", "STAGE_OUT")


@dataclass
class Submission:
    """What a submission produced: the run folders and, unless a dry run, the submitit jobs."""

    cluster: str
    run_dirs: list[Path]
    jobs: list[submitit.Job] = field(default_factory=list)
    script: str | None = None
    completed: str = ""  # set when nothing was submitted because the run had already completed (says so)

    @property
    def job_ids(self) -> list[str]:
        return [str(j.job_id) for j in self.jobs]


def launch_overrides(path: str | Path) -> list[str]:
    """A launch preset file (`launch:` mapping, see configs/launch/) as `launch.key=value` overrides."""
    data = read_yaml_file(path, "launch file", "configs/launch/")
    if not isinstance(data, dict) or set(data) != {"launch"} or not isinstance(data["launch"], dict):
        raise ConfigError(f"launch file '{path}' must hold exactly one top-level mapping `launch:`")
    # JSON is valid YAML flow syntax: empty strings, lists and mappings survive the dotlist round trip
    return [f"launch.{k}={json.dumps(v)}" for k, v in data["launch"].items()]


PROBE_ENTRY = "usjepa.eval.suite:run_probe"
PROBE_SCHEMA = "usjepa.eval.spec:ProbeRunConfig"


def is_probe_config(config: str | Path) -> bool:
    """A probe suite (encoders x datasets) rather than a pretraining config."""

    data = OmegaConf.to_container(OmegaConf.load(config)) or {}
    return isinstance(data, dict) and ("encoders" in data or "datasets" in data)


def run_folder(cfg: DictConfig) -> Path:
    """The run folder of a pretraining (`train.out_dir`) or probe (`out_dir`) config."""
    return Path(cfg.train.out_dir) if "train" in cfg else Path(cfg.out_dir)


def resolve_run_config(config: str | Path, overrides: list[str] | tuple[str, ...] = (),
                       launch_file: str | Path | None = None) -> DictConfig:
    """load_config (or load_probe_config) with a launch preset under the CLI overrides, and an absolute run folder."""
    pre = launch_overrides(launch_file) if launch_file else []
    if is_probe_config(config):
        from usjepa.eval.config import load_probe_config

        cfg = load_probe_config(config, [*pre, *overrides])
        cfg.out_dir = str(Path(cfg.out_dir).expanduser().absolute())
        return cfg
    cfg = load_config(config, [*pre, *overrides])
    cfg.train.out_dir = str(Path(cfg.train.out_dir).expanduser().absolute())
    return cfg


def slurm_job_states(job_ids: list[str]) -> dict[str, str]:
    """Current SLURM state per job id ('123', '123_4'), from sacct, else squeue; {} when SLURM is unreachable."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    states: dict[str, str] = {}
    if shutil.which("sacct"):  # asked by array job: members that never started only have a '123_[2-5%1]' record
        parents = sorted({i.split("_")[0] for i in ids})
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(parents)])
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0]:
                for jid in _array_members(parts[0]):
                    states[jid] = parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    if shutil.which("squeue"):  # squeue is fresher for queued jobs, and works without accounting
        # -r: one line per array member; without it pending members collapse into one '123_[2-5]' line
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) == 2:
                states[parts[0]] = parts[1]
    # an array none of whose members ever started may be recorded under its bare id
    return {j: states.get(j) or states[j.split("_")[0]] for j in ids if j in states or j.split("_")[0] in states}


def _array_members(job_id: str) -> list[str]:
    """'123_[1-3,7%2]' -> ['123_1', '123_2', '123_3', '123_7']; any other id -> [id]."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def active_job(run_dir: Path) -> tuple[str, str] | None:
    """(job id, state) when the run folder's last job is still queued or running (SLURM, or a local process)."""
    doc = read_json(Path(run_dir) / LAUNCH_FILE)
    if not doc or not doc.get("job_id"):
        return None
    if doc.get("cluster") in ("local", "debug"):
        from launch.control import local_job_alive

        return (str(doc["job_id"]), "RUNNING") if local_job_alive(doc) else None
    if doc.get("cluster") != "slurm":
        return None
    state = slurm_job_states([doc["job_id"]]).get(str(doc["job_id"]))
    return (str(doc["job_id"]), state) if state in ACTIVE_SLURM_STATES else None


def completed_run(run_dir: Path, cfg: DictConfig) -> str:
    """Why the run folder needs no job for `cfg` ('completed at step 20/20'), or '' when it does.

    A pretraining run counts as completed only up to its recorded step: a config asking for more steps extends it.
    """
    status = read_json(Path(run_dir) / STATUS_FILE) or {}
    if status.get("state") != "completed":
        return ""
    step = int(status.get("step") or 0)
    if "train" in cfg and int(cfg.train.steps) > step:
        return ""
    total = status.get("total_steps")
    return f"completed at step {step}/{total}" if total else "completed"


def submit_run(cfg: DictConfig, cluster: str | None = None, dry_run: bool = False, force: bool = False) -> Submission:
    """Submit one resolved config as one job (or print what would be submitted).

    A run folder that already completed this config gets no job (the Submission says why) unless `force`.
    """
    cluster = cluster or cfg.launch.cluster
    run_dir = run_folder(cfg)
    job_name = cfg.launch.job_name or job_name_for(run_dir)
    folder = run_dir / SUBMITIT_DIR
    done = "" if force else completed_run(run_dir, cfg)
    if done:
        return Submission(cluster, [run_dir], completed=done)
    if dry_run:
        script = render_sbatch(cfg.launch, folder, job_name) if cluster == "slurm" else None
        return Submission(cluster, [run_dir], script=script)
    busy = active_job(run_dir)
    if busy:
        raise ConfigError(f"run folder '{run_dir}' already has SLURM job {busy[0]} ({busy[1]}); wait for it, "
                          f"or `scancel {busy[0]}` before submitting again")
    submission_id = uuid.uuid4().hex[:12]
    probe = "train" not in cfg
    fn = TrainJob(to_dict(cfg), cfg.launch.max_requeues, submission_id,
                  **(dict(entry=PROBE_ENTRY, schema=PROBE_SCHEMA) if probe else {}))
    if cluster == "debug":
        check_launch(cfg.launch, cluster)
        save_run_config(cfg, run_dir)
        job = InProcessJob(fn, f"debug-{os.getpid()}")
    else:
        executor = make_executor(cfg.launch, folder, cluster, job_name)
        save_run_config(cfg, run_dir)
        job = executor.submit(fn)
    _record(run_dir, job, cluster, submission_id)
    logger.info("submitted %s job %s -> %s", cluster, job.job_id, run_dir)
    return Submission(cluster, [run_dir], [job])


def _record(run_dir: Path, job: Any, cluster: str, submission_id: str, **extra: Any) -> None:
    paths = getattr(job, "paths", None)  # in-process (debug) jobs have no log files
    write_launch_record(run_dir, cluster=cluster, job_id=str(job.job_id), submission=submission_id,
                        stdout=str(paths.stdout) if paths else "", stderr=str(paths.stderr) if paths else "",
                        **extra)


def wait_for(jobs: list[Any], poll_s: float = 5.0, timeout_s: float | None = None) -> list[str]:
    """Block until every job has ended; returns their final states (SLURM's, else submitit's).

    A SLURM job counts as ended once sacct/squeue show a state outside ACTIVE_SLURM_STATES on two polls in a
    row (a requeued job passes through short-lived states); other jobs once submitit says they are done.
    """
    start = time.time()
    slurm_ids = {str(j.job_id) for j in jobs if isinstance(j, SlurmJob)}
    seen_final: dict[str, int] = {}
    while True:
        states = slurm_job_states(sorted(slurm_ids)) if slurm_ids else {}
        for jid in slurm_ids:
            ended = bool(states.get(jid)) and states[jid] not in ACTIVE_SLURM_STATES
            seen_final[jid] = seen_final.get(jid, 0) + 1 if ended else 0
        if all(seen_final[str(j.job_id)] >= 2 if str(j.job_id) in slurm_ids else j.done() for j in jobs):
            return [states[str(j.job_id)] if str(j.job_id) in slurm_ids else str(j.state) for j in jobs]
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"jobs {', '.join(str(j.job_id) for j in jobs)} still running after {timeout_s}s")
        time.sleep(poll_s)
