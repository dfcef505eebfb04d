"""Which job holds a run folder, whether it is still alive, and `usjepa cancel DIR` (a run or a whole sweep).

SLURM jobs are cancelled with `scancel` of the job ids recorded in each run's launch.json (array members one by
one, so cancelling one member of a sweep leaves the others alone). A local job (`--cluster local`) is a submitit
controller process on the submitting machine: it gets SIGINT, which is submitit's own cancel (the controller stops
its tasks). A `--cluster debug` run is the submitting `usjepa` process itself. Plain `usjepa pretrain` runs record
no launcher process; stop them with Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from launch.runfiles import LAUNCH_FILE, STATUS_FILE, atomic_write_json, read_json
from launch.submit import ACTIVE_SLURM_STATES, slurm_job_states

_OUR_PROCESSES = ("submitit", "usjepa", "launch.job")  # words one of our launcher processes has in its command line


def local_pid(launch: dict) -> int | None:
    """The process that runs a local or debug job recorded on this machine, or None."""
    if launch.get("cluster") not in ("local", "debug") or launch.get("host") != socket.gethostname():
        return None
    job_id = str(launch.get("job_id") or "")
    text = job_id.split("-")[1] if job_id.startswith("debug-") else job_id  # debug-<pid>[-<member>]
    return int(text) if text.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether `pid` runs one of our launcher processes (not a zombie, not a stranger that reused the number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not one of ours
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs: trust the signal probe
        return True
    try:
        if "State:\tZ" in (proc / "status").read_text():
            return False
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(word in cmdline for word in _OUR_PROCESSES)


def local_job_alive(launch: dict) -> bool | None:
    """True / False for a local or debug job recorded on this machine; None when this machine cannot tell."""
    pid = local_pid(launch)
    if pid is None:
        return None
    if pid == os.getpid():  # a debug job of this very process: it ran synchronously and is over
        return False
    return process_alive(pid)


@dataclass
class CancelOutcome:
    run: Path
    job_id: str
    action: str  # scancel | SIGINT | skipped
    detail: str


def cancel(path: str | Path, dry_run: bool = False) -> list[CancelOutcome]:
    """Cancel the jobs of every run in a run or sweep folder; finished or unlaunched runs are reported, not touched."""
    from launch.status import find_runs  # (status imports this module)

    runs = find_runs(Path(path))
    docs = [(run, read_json(run / LAUNCH_FILE) or {}, read_json(run / STATUS_FILE) or {}) for run in runs]
    slurm_ids = [str(d["job_id"]) for _, d, _ in docs if d.get("cluster") == "slurm" and d.get("job_id")]
    states = slurm_job_states(slurm_ids) if slurm_ids else {}
    out: list[CancelOutcome] = []
    to_scancel: list[tuple[Path, dict, str]] = []
    for run, launch, status in docs:
        job_id = str(launch.get("job_id") or "")
        if not launch:
            out.append(CancelOutcome(run, "", "skipped", "no launch.json: not started by `usjepa submit` (stop a "
                                     "plain `usjepa pretrain` with Ctrl-C)"))
        elif launch.get("cluster") == "slurm":
            state = states.get(job_id)
            if state is not None and state not in ACTIVE_SLURM_STATES:
                out.append(CancelOutcome(run, job_id, "skipped", f"job already ended ({state})"))
            elif state is None and status.get("state") in ("completed", "failed"):
                out.append(CancelOutcome(run, job_id, "skipped", f"run {status['state']}"))
            else:
                to_scancel.append((run, launch, job_id))
        elif status.get("state") in ("completed", "failed"):
            out.append(CancelOutcome(run, job_id, "skipped", f"run {status['state']}"))
        else:
            pid = local_pid(launch)
            if pid is None:
                where = f"{launch.get('cluster')} job of host '{launch.get('host')}'"
                out.append(CancelOutcome(run, job_id, "skipped", f"{where}: cancel it there"))
            elif not local_job_alive(launch):
                out.append(CancelOutcome(run, job_id, "skipped", f"process {pid} is not running"))
            else:
                if not dry_run:
                    os.kill(pid, signal.SIGINT)
                    _mark_cancelled(run, launch)
                out.append(CancelOutcome(run, job_id, "SIGINT", f"signalled process {pid}"))
    if to_scancel:
        if not dry_run:
            _scancel([j for _, _, j in to_scancel])
            for run, launch, _ in to_scancel:
                _mark_cancelled(run, launch)
        out.extend(CancelOutcome(run, j, "scancel", "cancelled") for run, _, j in to_scancel)
    return sorted(out, key=lambda o: str(o.run))


def _scancel(job_ids: list[str]) -> None:
    from usjepa.config import ConfigError

    if shutil.which("scancel") is None:
        raise ConfigError(f"cannot cancel SLURM job(s) {', '.join(job_ids)}: `scancel` is not on PATH; run "
                          "`usjepa cancel` on a SLURM login node")
    res = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise ConfigError(f"scancel {' '.join(job_ids)} failed: {res.stderr.strip() or res.returncode}")


def _mark_cancelled(run: Path, launch: dict) -> None:
    """Remember the request in launch.json, so `usjepa status` can say 'cancelled' for a stopped local run."""
    atomic_write_json(run / LAUNCH_FILE, {**launch, "cancelled": time.time()})
