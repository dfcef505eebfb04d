"""`usjepa status` on fabricated run and sweep folders (file formats as the trainer and launcher write them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import launch.status as status_mod
from launch.runfiles import record_event, write_launch_record
from launch.status import collect_status, find_runs, format_status
from usjepa.cli import main

NOW = 1_700_000_000.0


def _run(root: Path, name: str, state: str, step: int, total: int, rows: list[tuple[int, float, float]],
         job_id: str | None = None, error: str | None = None, last_ckpt: float | None = None,
         requeues: int = 0, stderr: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"state": state, "step": step, "total_steps": total, "error": error,
                                               "updated": NOW, "last_ckpt": last_ckpt}))
    lines = ["step,epoch,loss,val_loss,lr,images_per_s"] + [f"{s},0,{loss},,0.001,{ips}" for s, loss, ips in rows]
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    if job_id:
        err_file = None
        if stderr is not None:
            err_file = d / "submitit_err.txt"
            err_file.write_text(stderr)
        write_launch_record(d, cluster="slurm", job_id=job_id, submission="s1", stdout="", stderr=str(err_file or ""))
    for _ in range(requeues):
        record_event(d, "requeue", submission="s1", job_id=job_id, step=step)
    return d


@pytest.fixture()
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.json").write_text("{}")
    _run(root, "a=1", "completed", 20, 20, [(10, 0.5, 100.0), (20, 0.25, 120.0)], job_id="50_0",
         last_ckpt=NOW - 30)
    _run(root, "a=2", "running", 12, 20, [(10, 0.7, 90.0)], job_id="50_1", last_ckpt=NOW - 4000, requeues=2)
    _run(root, "a=3", "failed", 3, 20, [], job_id="50_2",
         error="Traceback...\nTrainingError: loss became nan at step 3")
    _run(root, "a=4", "running", 5, 20, [(5, 0.9, 50.0)], job_id="50_3",
         stderr="srun: error: vm: task 0: Killed\nRuntimeError: CUDA out of memory\n")
    return root


def test_table_reads_every_member_from_its_folder(sweep) -> None:
    df = collect_status(sweep, query_slurm=False, now=NOW).set_index("run")
    assert list(df.index) == ["a=1", "a=2", "a=3", "a=4"]
    assert df.loc["a=1", "state"] == "completed" and df.loc["a=1", "step"] == 20 and df.loc["a=1", "total"] == 20
    assert df.loc["a=1", "loss"] == pytest.approx(0.25) and df.loc["a=1", "images_per_s"] == pytest.approx(120.0)
    assert df.loc["a=1", "since_ckpt"] == pytest.approx(30)
    assert df.loc["a=2", "requeues"] == 2 and df.loc["a=1", "requeues"] == 0
    assert df.loc["a=3", "error"] == "TrainingError: loss became nan at step 3"
    assert math.isnan(df.loc["a=3", "loss"])
    assert df.loc["a=2", "error"] == ""  # errors only for failed jobs
    assert df.loc["a=2", "job_id"] == "50_1"


def test_slurm_state_wins_when_reachable(sweep, monkeypatch) -> None:
    seen = []

    def fake_states(ids):
        seen.extend(ids)
        return {"50_1": "PENDING", "50_3": "OUT_OF_MEMORY"}

    monkeypatch.setattr(status_mod, "slurm_job_states", fake_states)
    df = collect_status(sweep, now=NOW).set_index("run")
    assert sorted(seen) == ["50_0", "50_1", "50_2", "50_3"]
    assert df.loc["a=2", "state"] == "PENDING"  # requeued, waiting: the folder still says running
    assert df.loc["a=1", "state"] == "completed"  # not reported by SLURM: from the folder
    assert df.loc["a=4", "state"] == "OUT_OF_MEMORY"
    assert df.loc["a=4", "error"] == "RuntimeError: CUDA out of memory"  # from the job's stderr


def test_single_run_folder_and_text_table(sweep, capsys) -> None:
    assert find_runs(sweep / "a=2") == [sweep / "a=2"]
    text = format_status(collect_status(sweep, query_slurm=False, now=NOW))
    assert "12/20" in text and "1h06m" in text and "TrainingError" in text
    assert main(["status", str(sweep / "a=1"), "--no-slurm"]) == 0
    out = capsys.readouterr().out
    assert "20/20" in out and "completed" in out and "a=2" not in out


def test_status_of_a_missing_folder_is_an_error(tmp_path, capsys) -> None:
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_submitted_but_not_started(tmp_path) -> None:
    d = tmp_path / "r"
    write_launch_record(d, cluster="slurm", job_id="77", submission="s", stdout="", stderr="")
    df = collect_status(d, query_slurm=False)
    assert df.loc[0, "state"] == "submitted" and df.loc[0, "step"] == 0 and df.loc[0, "job_id"] == "77"


def test_live_step_from_metrics_beside_the_checkpoint_step(tmp_path) -> None:
    # status.json is written at each save (step 10); metrics.csv has moved on to step 14
    d = _run(tmp_path, "r", "running", 10, 40, [(12, 0.5, 80.0), (14, 0.4, 81.0)], last_ckpt=NOW - 60)
    row = collect_status(d, query_slurm=False, now=NOW).iloc[0]
    assert (row["step"], row["ckpt_step"], row["total"]) == (14, 10, 40)
    text = format_status(collect_status(d, query_slurm=False, now=NOW))
    header, line = text.splitlines()
    assert " step ckpt " in header and line.split()[line.split().index("14/40") + 1] == "10"
    # a failed run records where it failed, not where its checkpoint is
    f = _run(tmp_path, "f", "failed", 13, 40, [(13, 0.4, 80.0)], error="TrainingError: loss became nan")
    row = collect_status(f, query_slurm=False, now=NOW).iloc[0]
    assert row["step"] == 13 and math.isnan(row["ckpt_step"])


def test_requeues_count_slurm_restarts_that_the_launcher_did_not_ask_for(tmp_path) -> None:
    d = _run(tmp_path, "r", "running", 5, 20, [(5, 0.9, 50.0)], job_id="61")
    record_event(d, "start", submission="s1", job_id="61", restart_count=0)
    record_event(d, "start", submission="s1", job_id="61", restart_count=1)  # `scontrol requeue` or a node failure
    assert collect_status(d, query_slurm=False).loc[0, "requeues"] == 1
    # a preemption the launcher requeued itself, then one more hard restart: two, not three
    record_event(d, "requeue", submission="s1", job_id="61", step=8)
    record_event(d, "start", submission="s1", job_id="61", restart_count=2)
    assert collect_status(d, query_slurm=False).loc[0, "requeues"] == 2
    # a later submission (job 62) adds its own
    record_event(d, "requeue", submission="s2", job_id="62", step=12)
    assert collect_status(d, query_slurm=False).loc[0, "requeues"] == 3


def test_pending_array_members_are_asked_one_per_line(monkeypatch) -> None:
    import launch.submit as submit_mod

    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        if cmd[0] == "squeue":  # with -r, SLURM lists pending members one by one instead of '70_[1-2]'
            return "70_0|RUNNING\n70_1|PENDING\n70_2|PENDING\n" if "-r" in cmd else "70_0|RUNNING\n70_[1-2]|PENDING\n"
        return ""

    monkeypatch.setattr(submit_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(submit_mod, "_run", fake_run)
    assert submit_mod.slurm_job_states(["70_0", "70_1", "70_2"]) == {"70_0": "RUNNING", "70_1": "PENDING",
                                                                     "70_2": "PENDING"}


def test_a_local_job_whose_process_is_gone_is_not_reported_running(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    d = _run(tmp_path, "r", "running", 4, 20, [(6, 0.9, 50.0)])
    write_launch_record(d, cluster="local", job_id=str(gone.pid), submission="s1", stdout="", stderr="")
    assert read_json_host(d) == socket.gethostname()
    row = collect_status(d, query_slurm=False).iloc[0]
    assert row["state"] == "stopped" and row["step"] == 6
    doc = json.loads((d / "launch.json").read_text())
    (d / "launch.json").write_text(json.dumps({**doc, "cancelled": NOW}))
    assert collect_status(d, query_slurm=False).loc[0, "state"] == "cancelled"


def read_json_host(d: Path) -> str:
    return json.loads((d / "launch.json").read_text())["host"]


def test_members_that_never_started_take_the_state_of_their_array_record(monkeypatch) -> None:
    import launch.submit as submit_mod

    asked = []

    def fake_run(cmd):
        asked.append(cmd)
        if cmd[0] == "sacct":  # asked by array: never-started members exist only as '71_[1-3%1]' (or as '72')
            return "71_0|CANCELLED by 0\n71_[1-3%1]|CANCELLED by 0\n72|CANCELLED by 0\n"
        return ""  # squeue: gone

    monkeypatch.setattr(submit_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(submit_mod, "_run", fake_run)
    states = submit_mod.slurm_job_states(["71_0", "71_2", "72_1", "73_0"])
    assert states == {"71_0": "CANCELLED", "71_2": "CANCELLED", "72_1": "CANCELLED"}
    assert asked[0][-1] == "71,72,73"
