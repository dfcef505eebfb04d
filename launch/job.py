"""The callable every launcher runs: a submitit `Checkpointable` around the training entry point.

Stop signals: while training runs, `TrainJob` replaces submitit's handlers (which would checkpoint in the
middle of a step on USR2, and ignore SIGTERM) with a `StopFlag` for USR2 (or SUBMITIT_PREEMPT_SIGNAL), SIGTERM
and SIGINT. The trainer polls the flag at step boundaries, saves `latest.pt` atomically and returns
"preempted". What follows depends on the signal:
- USR2 (preemption or the time limit, `launch.signal_delay_s` before it): rank 0 requeues the job through
  submitit (`scontrol requeue` on SLURM, a restart by the local controller), counted in `job_events.json`
  against `launch.max_requeues`;
- SIGTERM (scancel, `scontrol requeue`, preemption with a grace time) or SIGINT: no requeue from here (the job
  was cancelled, or SLURM requeues it itself); the stop is recorded in `job_events.json`.
The next start resumes from the run folder, whatever caused the restart (node failure included), and its log
says from which step. Rank 0 holds the run folder's lock for the whole job, so a second job for the same folder
is refused before it writes anything there.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.helpers import Checkpointable

from launch.runfiles import link_logs, record_event, requeue_count
from usjepa.io.lock import FolderLock

if TYPE_CHECKING:
    from usjepa.train.signals import StopFlag

logger = logging.getLogger(__name__)

DEFAULT_ENTRY = "usjepa.train:run_training"
DEFAULT_SCHEMA = "usjepa.config:PretrainConfig"


# Modules that moved: jobs pickled before the move (queued or requeued across an upgrade) name the old module.
_MOVED = {"usjepa.eval.benchmark": "usjepa.eval.suite"}


def _import(target: str) -> Any:
    """'package.module:attribute' -> the attribute."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"entry point '{target}' must look like 'package.module:function'")
    return getattr(importlib.import_module(_MOVED.get(module, module)), attr)


def job_environment() -> submitit.JobEnvironment | None:
    """submitit's view of the current job, or None when not started by submitit (a plain call)."""
    if not os.environ.get("SUBMITIT_EXECUTOR") and not os.environ.get("SUBMITIT_FOLDER"):
        return None
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def _log_to_stderr() -> None:
    """A job process has no logging set up: send INFO lines (resume step, stops, requeues) to the job's log."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


def _export_local_ranks(env: submitit.JobEnvironment | None) -> None:
    """submitit's local executor starts tasks without torchrun variables: add them (one node, loopback)."""
    if env is None or env.name() != "local" or env.num_tasks <= 1:
        return
    os.environ.update(
        RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + int(env.job_id) % 20000),
    )


class TrainJob(Checkpointable):
    """Run `entry(cfg, should_stop=...)` for a resolved config; requeue it when it stops early.

    `config` is the resolved config as a plain dict (its `train.out_dir` is the run folder);
    `submission_id` groups the requeues of one submission for the `max_requeues` budget.
    """

    def __init__(self, config: dict, max_requeues: int = 5, submission_id: str | None = None,
                 entry: str = DEFAULT_ENTRY, schema: str = DEFAULT_SCHEMA) -> None:
        self.config = config
        self.max_requeues = int(max_requeues)
        self.submission_id = submission_id or uuid.uuid4().hex[:12]
        self.entry = entry
        self.schema = schema

    @property
    def run_dir(self) -> Path:
        train = self.config.get("train")
        return Path(train["out_dir"] if train else self.config["out_dir"])

    def typed_config(self) -> Any:
        from usjepa.config import spec_of

        return spec_of(self.config, _import(self.schema))

    def __call__(self) -> Any:
        env = job_environment()
        rank = env.global_rank if env is not None else 0
        _export_local_ranks(env)
        _log_to_stderr()
        cfg = self.typed_config()
        lock = FolderLock(self.run_dir)
        if rank == 0:
            lock.acquire()  # before anything is written: a second job for this folder is refused here
        try:
            if rank == 0:
                self._record_start(env)
            from usjepa.train.signals import StopFlag  # (imports the trainer package: only in the job)

            flag = StopFlag().install(signal.SIGTERM, signal.SIGINT)
            if env is not None and env.name() != "debug":
                flag.install(submitit.JobEnvironment._usr_sig())  # replaces submitit's mid-step checkpoint handler
            try:
                result = _import(self.entry)(cfg, should_stop=flag)
            finally:
                flag.restore()
            if getattr(result, "status", None) == "preempted":
                self._after_stop(env, rank, int(getattr(result, "step", -1)), flag)
            return result
        finally:
            lock.release()

    def _after_stop(self, env: submitit.JobEnvironment | None, rank: int, step: int, flag: StopFlag) -> None:
        """Requeue after the preemption signal; after SIGTERM / SIGINT record the stop and end the job."""
        usr = submitit.JobEnvironment._usr_sig()
        if usr in flag.signals or flag.signum is None:
            self._requeue_after_stop(env, rank, step)
            return
        if rank == 0:
            record_event(self.run_dir, "stop", submission=self.submission_id, step=step, signal=flag.reason,
                         job_id=env.job_id if env is not None else None)
        logger.warning("stopped by %s at step %d; latest.pt is saved in %s. A requeued or preempted job resumes "
                       "from it by itself; after a cancel, submit the same config again to resume",
                       flag.reason, step, self.run_dir)

    def _record_start(self, env: submitit.JobEnvironment | None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fields: dict[str, Any] = {"submission": self.submission_id}
        if env is not None:
            fields.update(job_id=env.job_id, cluster=env.name(), num_tasks=env.num_tasks,
                          restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
            from usjepa.train.distributed import resolve_env  # (imports the trainer package: only in the job)

            dist_env = resolve_env()  # what the trainer will see (rank 0's view)
            fields.update(world_size=dist_env.world_size, dist_source=dist_env.source)
            if env.name() != "debug":
                link_logs(self.run_dir, env.paths.stdout, env.paths.stderr)
        record_event(self.run_dir, "start", **fields)

    def _budget_left(self) -> int:
        return self.max_requeues - requeue_count(self.run_dir, self.submission_id)

    def _requeue_after_stop(self, env: submitit.JobEnvironment | None, rank: int, step: int) -> None:
        """Called when the trainer returned "preempted": rank 0 requeues, other ranks just finish."""
        if rank != 0:
            return
        if env is None or env.name() == "debug":
            logger.warning("stopped at step %d outside a cluster job: run the same command again to resume "
                           "from %s", step, self.run_dir / "latest.pt")
            return
        left = self._budget_left()
        if left <= 0:
            raise RuntimeError(
                f"run '{self.run_dir}' was preempted at step {step} after {self.max_requeues} requeues "
                "(launch.max_requeues); latest.pt is intact: submit the same config again to resume, "
                "or raise launch.max_requeues")
        record_event(self.run_dir, "requeue", submission=self.submission_id, job_id=env.job_id, step=step,
                     reason="preempted or timed out")
        logger.warning("requeueing job %s at step %d (%d requeues left)", env.job_id, step, left - 1)
        try:
            env._requeue(left - 1)  # SLURM: scontrol requeue; local: exits with submitit's requeue code
        except Exception as e:
            raise RuntimeError(f"could not requeue job {env.job_id} ({e}); latest.pt at step {step} in "
                               f"'{self.run_dir}' is intact: submit the same config again to resume") from e
        # like submitit: leave without a result file, so the job counts as unfinished until the requeued run ends
        sys.exit(-1)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """submitit's handler path (the signal came before training started): requeue the same callable.

        The trainer resumes from `latest.pt` by itself, so the resubmitted callable needs no extra state.
        Returning None declines the requeue when the budget is spent.
        """
        if self._budget_left() <= 0:
            logger.error("not requeueing '%s': launch.max_requeues=%d reached", self.run_dir, self.max_requeues)
            return None
        env = job_environment()
        record_event(self.run_dir, "requeue", submission=self.submission_id,
                     job_id=env.job_id if env is not None else None, step=None, reason="signal before training")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
