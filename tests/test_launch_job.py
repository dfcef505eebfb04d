"""The submitit callable: the stop flag, requeue after USR2 (not after SIGTERM), the requeue budget, checkpoint(),
the run folder's lock."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest
from submitit.helpers import DelayedSubmission

import launch.job as job_mod
from launch.job import TrainJob
from launch.runfiles import read_events, record_event
from launch.submit import resolve_run_config
from usjepa.config import to_dict
from usjepa.io.lock import FolderBusy
from usjepa.train.signals import StopFlag

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
ENTRY = f"{__name__}:fake_train"


@dataclass
class FakeResult:
    status: str
    step: int
    run_dir: Path


SIGNAL_BY_SEED = {1: signal.SIGUSR2, 2: signal.SIGTERM}


def fake_train(cfg, should_stop=None) -> FakeResult:
    """Counts steps; at step 3 the job receives the signal the seed names, like a scheduler would send it."""
    total = int(cfg.train.steps)
    for step in range(1, total + 1):
        if step == 3 and cfg.train.seed in SIGNAL_BY_SEED:
            os.kill(os.getpid(), SIGNAL_BY_SEED[cfg.train.seed])
        if should_stop is not None and should_stop():
            return FakeResult("preempted", step, Path(cfg.train.out_dir))
    return FakeResult("completed", total, Path(cfg.train.out_dir))


class FakeEnv:
    """The bits of submitit.JobEnvironment the job uses."""

    def __init__(self, rank: int = 0, name: str = "slurm") -> None:
        self.global_rank, self._name, self.job_id, self.num_tasks = rank, name, "123_4", 2
        self.requeued: list[int] = []
        self.paths = SimpleNamespace(stdout=Path("submitit/123_4_0_log.out"), stderr=Path("submitit/123_4_0_log.err"))

    def name(self) -> str:
        return self._name

    def _requeue(self, countdown: int) -> None:
        self.requeued.append(countdown)


def _job(tmp_path: Path, preempt: bool, max_requeues: int = 3, seed: int | None = None) -> TrainJob:
    seed = (1 if preempt else 0) if seed is None else seed
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path / 'run'}", "train.steps=6", f"train.seed={seed}"])
    return TrainJob(to_dict(cfg), max_requeues=max_requeues, submission_id="sub-a", entry=ENTRY)


def test_flag_only_records_the_signal_and_restores_the_previous_handler() -> None:
    before = [signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)]
    flag = StopFlag().install(signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
    assert not flag()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGINT)
    assert flag() and flag.signals == [signal.SIGUSR2, signal.SIGINT] and flag.reason == "SIGUSR2"
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
        os.kill(os.getpid(), signal.SIGINT)
    flag.restore()
    assert [signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)] == before


def test_sigterm_saves_and_ends_the_job_without_a_requeue(tmp_path, monkeypatch) -> None:
    """scancel / scontrol requeue send SIGTERM: the job stops and records it; SLURM itself decides about a requeue."""
    env = FakeEnv(rank=0)
    monkeypatch.setattr(job_mod, "job_environment", lambda: env)
    result = _job(tmp_path, preempt=False, seed=2)()
    assert (result.status, result.step) == ("preempted", 3) and env.requeued == []
    events = read_events(tmp_path / "run")
    assert events["requeues"] == [] and events["stops"][0]["signal"] == "SIGTERM" and events["stops"][0]["step"] == 3


HOLD = """
import sys, time
from usjepa.io.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_job_for_a_held_folder_is_refused_before_writing(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
            _job(tmp_path, preempt=False)()
        assert not (tmp_path / "run" / "job_events.json").exists()
    finally:
        holder.kill()
        holder.wait(30)


def test_plain_call_runs_the_entry_and_records_the_start(tmp_path) -> None:
    result = _job(tmp_path, preempt=False)()
    assert (result.status, result.step) == ("completed", 6)
    events = read_events(tmp_path / "run")
    assert len(events["starts"]) == 1 and events["starts"][0]["submission"] == "sub-a"
    assert events["requeues"] == []


def test_preempted_rank0_requeues_then_exits(tmp_path, monkeypatch) -> None:
    env = FakeEnv(rank=0)
    monkeypatch.setattr(job_mod, "job_environment", lambda: env)
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(SystemExit):
        _job(tmp_path, preempt=True, max_requeues=3)()
    assert env.requeued == [2]  # 3 allowed, this is the first
    (ev,) = read_events(tmp_path / "run")["requeues"]
    assert ev["step"] == 3 and ev["job_id"] == "123_4" and ev["submission"] == "sub-a"
    assert signal.getsignal(signal.SIGUSR2) == before  # our handler is gone after the run
    assert os.readlink(tmp_path / "run" / "stderr.log").endswith("submitit/123_4_0_log.err")


def test_other_ranks_return_without_requeueing(tmp_path, monkeypatch) -> None:
    env = FakeEnv(rank=1)
    monkeypatch.setattr(job_mod, "job_environment", lambda: env)
    result = _job(tmp_path, preempt=True)()
    assert result.status == "preempted" and env.requeued == []
    assert read_events(tmp_path / "run")["requeues"] == []
    assert read_events(tmp_path / "run")["starts"] == []  # only rank 0 writes the run folder


def test_requeue_budget_counts_only_this_submission(tmp_path, monkeypatch) -> None:
    env = FakeEnv(rank=0)
    monkeypatch.setattr(job_mod, "job_environment", lambda: env)
    run = tmp_path / "run"
    record_event(run, "requeue", submission="older-submission", step=1)
    record_event(run, "requeue", submission="sub-a", step=2)
    with pytest.raises(SystemExit):  # 1 of 2 used by this submission: one left
        _job(tmp_path, preempt=True, max_requeues=2)()
    with pytest.raises(RuntimeError, match="launch.max_requeues"):
        _job(tmp_path, preempt=True, max_requeues=2)()
    assert env.requeued == [0]


def test_checkpoint_resubmits_the_same_callable_until_the_budget_is_spent(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(job_mod, "job_environment", lambda: None)
    job = _job(tmp_path, preempt=False, max_requeues=1)
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and delayed.function is job
    assert read_events(tmp_path / "run")["requeues"][0]["reason"] == "signal before training"
    assert job.checkpoint() is None


def test_job_survives_pickling(tmp_path) -> None:
    job = cloudpickle.loads(cloudpickle.dumps(_job(tmp_path, preempt=False)))
    assert job.run_dir == tmp_path / "run" and job().status == "completed"


def test_a_job_pickled_before_the_probe_suite_moved_still_finds_its_entry():
    """Queued or requeued probe jobs name `usjepa.eval.benchmark:run_probe`, the module's name before it became
    `usjepa.eval.suite`."""
    from usjepa.eval.suite import run_probe

    assert job_mod._import("usjepa.eval.benchmark:run_probe") is run_probe
    assert job_mod._import("usjepa.eval.suite:run_probe") is run_probe
