"""SIGTERM to a real SLURM job (`scontrol requeue`: SLURM sends SIGTERM, waits KillWait, then requeues the job
itself): the job saves at the next step boundary instead of training on until SIGKILL, does not requeue itself
on top, and the requeued run resumes to the weights of an uninterrupted job."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch.runfiles import read_events, read_json
from launch.submit import resolve_run_config
from tests.test_launch_slurm import CONFIG, TINY, _cluster_answers, _metric_steps, _submit, _wait, _weights
from usjepa.data import build_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DEADLINE_S = 480
SIGNAL_AFTER = 4


@pytest.fixture(scope="module", autouse=True)
def _need_cluster() -> None:
    if not _cluster_answers():
        pytest.skip("no SLURM controller answers; start one with `bash launch/slurm_local.sh up`")


def test_sigterm_saves_and_the_requeued_job_resumes_to_equal_weights(tmp_path: Path) -> None:
    start = time.time()
    cfg = resolve_run_config(CONFIG, [*TINY, f"train.out_dir={tmp_path / 'warm'}"])
    build_dataset(cfg.data, split="train", img_size=tuple(cfg.model.img_size), augment=False)
    ref, term = tmp_path / "ref", tmp_path / "term"
    jobs = {"ref": _submit(ref), "term": _submit(term)}
    while max(_metric_steps(term), default=0) < SIGNAL_AFTER:
        state = (read_json(term / "status.json") or {}).get("state")
        assert state not in ("completed", "failed"), f"'term' ended before the signal: {state}"
        assert time.time() < start + DEADLINE_S, "'term' never reached the signal step"
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", jobs["term"]], check=True)
    signalled_at = max(_metric_steps(term))
    states = _wait(list(jobs.values()), start + DEADLINE_S)
    assert states[jobs["term"]] == "COMPLETED" and states[jobs["ref"]] == "COMPLETED", states

    events = read_events(term)
    (stop,) = events["stops"]
    assert stop["signal"] == "SIGTERM" and signalled_at <= stop["step"] < int(cfg.train.steps)
    assert events["requeues"] == []  # SLURM requeued the job; the job did not requeue itself as well
    assert len(events["starts"]) == 2 and events["starts"][1]["restart_count"] == 1
    assert _metric_steps(term) == list(range(1, int(cfg.train.steps) + 1))
    log = Path(read_json(term / "launch.json")["stderr"]).read_text(errors="replace")
    assert f"resuming {term} from latest.pt at step {stop['step']}" in log  # the job log names the step
    a, b = _weights(term), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the signalled and the uninterrupted job"
