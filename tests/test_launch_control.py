"""`usjepa cancel`, `usjepa resubmit` and `submit` on a completed run, without a scheduler (the SLURM side:
test_launch_slurm_control.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.control import cancel, local_job_alive
from launch.resubmit import plan_resubmit
from launch.runfiles import read_json, write_launch_record
from launch.status import collect_status
from launch.submit import resolve_run_config
from usjepa.cli import main
from usjepa.config import save_run_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
TINY = ["data.num_images=24", "data.batch_size=4", "train.steps=3", "train.log_every=1", "train.progress=false",
        "train.threads=1", "model.depth=1", "predictor.depth=1"]
# a stand-in for submitit's local controller: a process whose command line names submitit
CONTROLLER = "import time\n# submitit.local._local stand-in\ntime.sleep(120)"


def _status(run: Path, state: str, step: int, total: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(json.dumps({"state": state, "step": step, "total_steps": total}))


def _local_job(run: Path, pid: int, host: str | None = None) -> None:
    write_launch_record(run, cluster="local", job_id=str(pid), submission="s", stdout="", stderr="")
    if host is not None:
        doc = read_json(run / "launch.json")
        (run / "launch.json").write_text(json.dumps({**doc, "host": host}))


def test_cancel_signals_the_local_job_of_each_unfinished_run(tmp_path, capsys) -> None:
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    live = subprocess.Popen([sys.executable, "-c", CONTROLLER])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # not one of ours
    try:
        _status(sweep / "a", "running", 2, 9)
        _local_job(sweep / "a", live.pid)
        _status(sweep / "b", "completed", 9, 9)
        _local_job(sweep / "b", live.pid)  # (the same pid: only the unfinished run may be signalled)
        _status(sweep / "c", "running", 1, 9)
        _local_job(sweep / "c", stranger.pid)
        _status(sweep / "d", "running", 1, 9)
        _local_job(sweep / "d", live.pid, host="another-node")
        assert local_job_alive(read_json(sweep / "a" / "launch.json")) is True
        assert local_job_alive(read_json(sweep / "c" / "launch.json")) is False  # a pid reused by a stranger
        assert main(["cancel", str(sweep), "--dry-run"]) == 0
        assert live.poll() is None and "would cancel" in capsys.readouterr().out
        outcomes = {o.run.name: o for o in cancel(sweep)}
        assert outcomes["a"].action == "SIGINT"
        assert outcomes["b"].action == "skipped" and outcomes["c"].action == "skipped"
        assert "another-node" in outcomes["d"].detail
        assert live.wait(timeout=30) != 0  # SIGINT: submitit's own cancel of a local controller
        assert stranger.poll() is None
        states = collect_status(sweep, query_slurm=False).set_index("run")["state"]
        assert states["a"] == "cancelled" and states["b"] == "completed" and states["c"] == "stopped"
    finally:
        for p in (live, stranger):
            p.kill()
            p.wait()


def test_cancel_of_a_folder_without_jobs_says_so(tmp_path, capsys) -> None:
    _status(tmp_path / "run", "running", 1, 3)
    assert main(["cancel", str(tmp_path / "run")]) == 0
    assert "no launch.json" in capsys.readouterr().out


def test_submit_on_a_completed_run_submits_nothing_unless_forced(tmp_path, capsys) -> None:
    run = tmp_path / "done"
    _status(run, "completed", 3, 3)
    assert main(["submit", str(CONFIG), *TINY, f"train.out_dir={run}", "--cluster", "debug"]) == 0
    out = capsys.readouterr().out
    assert "nothing submitted" in out and "completed at step 3/3" in out and "--force" in out
    assert not (run / "launch.json").exists() and not (run / "config.yaml").exists()
    assert main(["submit", str(CONFIG), *TINY, f"train.out_dir={run}", "--cluster", "slurm", "--dry-run",
                 "--force"]) == 0
    assert "#SBATCH" in capsys.readouterr().out
    # asking for more steps extends the run: that is not "completed"
    assert main(["submit", str(CONFIG), *TINY, "train.steps=5", f"train.out_dir={run}", "--cluster", "slurm",
                 "--dry-run"]) == 0
    assert "#SBATCH" in capsys.readouterr().out


def _member(sweep: Path, name: str, state: str | None, launched: bool = True) -> Path:
    run = sweep / name
    cfg = resolve_run_config(CONFIG, [*TINY, f"train.out_dir={run}"])
    save_run_config(cfg, run)
    if state:
        _status(run, state, 3 if state == "completed" else 1, 3)
    if launched:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        _local_job(run, gone.pid)
    return run


def test_resubmit_picks_the_runs_that_ended_early_and_sends_them_as_one_array(tmp_path, capsys) -> None:
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "sw", "submissions": []}))
    _member(sweep, "ok", "completed")
    _member(sweep, "failed", "failed")
    _member(sweep, "killed", "running")  # its process is gone: killed without a word
    _member(sweep, "never", None, launched=False)
    plan = plan_resubmit(sweep)
    assert sorted((r.name, s) for r, s in plan.to_submit) == [("failed", "failed"), ("killed", "running")]
    assert sorted(r.name for r, _ in plan.skipped) == ["never", "ok"]
    assert main(["resubmit", str(sweep), "--cluster", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-1" in out and "would resubmit (failed)" in out and "skip" in out


@pytest.mark.slow
def test_resubmit_runs_a_failed_run_again_and_it_completes(tmp_path, capsys) -> None:
    run = _member(tmp_path, "r", "failed")
    assert main(["resubmit", str(run), "--cluster", "debug"]) == 0
    assert (read_json(run / "status.json") or {})["state"] == "completed"
    assert read_json(run / "launch.json")["cluster"] == "debug"
    assert main(["resubmit", str(run), "--cluster", "debug"]) == 0
    assert "nothing to resubmit" in capsys.readouterr().out


@pytest.mark.slow
def test_cancel_stops_a_real_local_job(tmp_path, capsys) -> None:
    run = tmp_path / "loc"
    assert main(["submit", str(CONFIG), *TINY, "train.steps=100000", "train.ckpt_every=50",
                 f"train.out_dir={run}", "--cluster", "local"]) == 0
    deadline = time.time() + 300
    while (read_json(run / "status.json") or {}).get("state") != "running":
        assert time.time() < deadline, "the local job never started training"
        time.sleep(1)
    launch = read_json(run / "launch.json")
    assert local_job_alive(launch) and launch["host"] == socket.gethostname()
    assert main(["cancel", str(run)]) == 0
    assert "cancelled" in capsys.readouterr().out
    deadline = time.time() + 60
    while local_job_alive(read_json(run / "launch.json")):
        assert time.time() < deadline, "the local job survived usjepa cancel"
        time.sleep(0.5)
    assert collect_status(run, query_slurm=False).loc[0, "state"] in ("cancelled", "failed")
