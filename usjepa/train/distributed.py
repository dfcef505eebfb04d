"""The one place that decides rank / world size: SLURM task, torchrun worker, or a single process.

`resolve_env()` reads the environment only (no side effects); `init_distributed(env)` starts the
process group (gloo on CPU; on CUDA nccl for GPU tensors plus gloo for CPU ones) and is a no-op for a world
of one. A half-set environment is a `DistributedEnvError` that names the missing variables, never a silent
single-process run.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from usjepa.errors import UsjepaError
from usjepa.train.collectives import backend_for

logger = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# SLURM sets these for every task launched by `srun` (submitit launches its tasks that way).
SLURM_TASK_VARS = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")
SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
PORT_BASE, PORT_SPAN = 20000, 20000  # SLURM master port = PORT_BASE + job_id % PORT_SPAN


class DistributedEnvError(UsjepaError, RuntimeError):
    """The environment describes a distributed run only partly, or inconsistently."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # slurm | torchrun | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------- SLURM node lists


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in SLURM node list '{text}'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in SLURM node list '{text}'")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_range_set(body: str, where: str) -> list[str]:
    """'001-003,7' -> ['001', '002', '003', '7'] (zero padding kept per range)."""
    out = []
    for item in body.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"bad range '{item}' in SLURM node list '{where}'")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range '{item}' in SLURM node list '{where}'")
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_host(pattern: str, where: str) -> list[str]:
    """'gpu[1-2]-r[3,5]' -> gpu1-r3, gpu1-r5, gpu2-r3, gpu2-r5 (the cartesian product, in order)."""
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end():]
    values = _expand_range_set(m.group(1), where)
    return [head + v + rest for v in values for rest in _expand_host(tail, where)]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM compact host list ('node[01-03,07],login1') the way `scontrol show hostnames` does."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        hosts.extend(_expand_host(part, nodelist))
    if not hosts:
        raise ValueError(f"empty SLURM node list '{nodelist}'")
    return hosts


def slurm_master_port(job_id: str) -> int:
    """A port every task of one job derives alike, different for neighbouring jobs (array tasks included)."""
    digits = re.sub(r"\D", "", job_id)
    if not digits:
        raise DistributedEnvError(f"SLURM_JOB_ID='{job_id}' has no digits to derive a master port from")
    return PORT_BASE + int(digits) % PORT_SPAN


# ----------------------------------------------------------------------------- resolver


def _int(environ: Mapping[str, str], key: str) -> int:
    value = environ[key]
    try:
        return int(value)
    except ValueError:
        raise DistributedEnvError(f"environment variable {key}='{value}' is not an integer") from None


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    missing = [k for k in TORCHRUN_VARS if not environ.get(k)]
    if missing:
        present = [k for k in TORCHRUN_VARS if environ.get(k)]
        raise DistributedEnvError(
            f"half-set torchrun environment: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"launch with `torchrun`, set all of {', '.join(TORCHRUN_VARS)}, or unset them for one process"
        )
    env = DistEnv(
        rank=_int(environ, "RANK"),
        local_rank=_int(environ, "LOCAL_RANK"),
        world_size=_int(environ, "WORLD_SIZE"),
        master_addr=environ["MASTER_ADDR"],
        master_port=_int(environ, "MASTER_PORT"),
        source="torchrun",
    )
    return _checked(env)


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    """True inside a task started by srun (a job step); False in the batch script or a login shell."""
    return bool(environ.get("SLURM_STEP_ID")) and environ.get("SLURM_STEP_ID") not in ("batch", "extern")


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    missing = [k for k in SLURM_TASK_VARS if not environ.get(k)]
    nodelist_key = next((k for k in SLURM_NODELIST_VARS if environ.get(k)), None)
    if nodelist_key is None:
        missing.append(" or ".join(SLURM_NODELIST_VARS))
    if missing:
        raise DistributedEnvError(
            f"half-set SLURM environment (inside job step {environ.get('SLURM_STEP_ID')}): missing "
            f"{', '.join(missing)}; start tasks with `srun` (submitit does) or unset SLURM_STEP_ID"
        )
    try:
        hosts = expand_nodelist(environ[nodelist_key])
    except ValueError as e:
        raise DistributedEnvError(f"{nodelist_key}: {e}") from None
    # the step's task count: a job may hold more tasks than one step runs
    world = _int(environ, "SLURM_STEP_NUM_TASKS" if environ.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS")
    if environ.get("MASTER_PORT"):
        port = _int(environ, "MASTER_PORT")
    else:
        port = slurm_master_port(environ["SLURM_JOB_ID"])
    env = DistEnv(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=_int(environ, "SLURM_LOCALID"),
        world_size=world,
        master_addr=environ.get("MASTER_ADDR") or hosts[0],
        master_port=port,
        source="slurm",
    )
    return _checked(env)


def _checked(env: DistEnv) -> DistEnv:
    where = env.source
    if env.world_size < 1:
        raise DistributedEnvError(f"{where}: world size {env.world_size} must be >= 1")
    if not 0 <= env.rank < env.world_size:
        raise DistributedEnvError(f"{where}: rank {env.rank} is outside [0, world size {env.world_size})")
    if not 0 <= env.local_rank <= env.rank:
        raise DistributedEnvError(f"{where}: local rank {env.local_rank} must be in [0, rank {env.rank}]")
    if not 0 < env.master_port < 65536:
        raise DistributedEnvError(f"{where}: master port {env.master_port} is not a valid TCP port")
    return env


def resolve_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank, local rank, world size and rendezvous address from torchrun, SLURM (srun task), or neither.

    torchrun wins when any of its variables is set (it may run inside a SLURM allocation); otherwise a
    task inside a SLURM job step (srun) uses the SLURM variables; anything else is a single process.
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return _from_torchrun(environ)
    if _in_slurm_step(environ):
        return _from_slurm(environ)
    return DistEnv()


# ----------------------------------------------------------------------------- process group


def init_distributed(env: DistEnv, timeout_s: float = 1800.0) -> None:
    """Join the process group described by `env` (see `collectives.backend_for`); no-op for world 1."""
    if env.world_size == 1:
        return
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise DistributedEnvError(
                f"a process group is already initialised as rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"but the environment says rank {env.rank}/{env.world_size}"
            )
        return
    use_cuda = torch.cuda.is_available()
    backend = backend_for("cuda" if use_cuda else "cpu")  # NCCL serves CUDA tensors, gloo the CPU ones
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    logger.info(
        "joining process group: rank %d/%d (local %d) via %s at %s:%d [%s]",
        env.rank, env.world_size, env.local_rank, backend, env.master_addr, env.master_port, env.source,
    )
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
