"""`usjepa submit` without a scheduler: the debug executor (this process) and the local executor (a child
process started by submitit), both asked for explicitly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from launch.runfiles import read_events, read_json
from usjepa.cli import main

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
TINY = ["data.num_images=24", "data.batch_size=4", "train.steps=3", "train.log_every=1", "train.progress=false",
        "train.threads=1", "model.depth=1", "predictor.depth=1"]


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_debug_cluster_trains_in_this_process_and_resumes(tmp_path, capsys) -> None:
    run = tmp_path / "dbg"
    assert main(["submit", str(CONFIG), *TINY, f"train.out_dir={run}", "--cluster", "debug"]) == 0
    assert (read_json(run / "status.json") or {})["state"] == "completed"
    assert _steps(run) == [1, 2, 3]
    assert read_json(run / "launch.json")["cluster"] == "debug"
    # the same command with more steps continues from latest.pt instead of starting over
    assert main(["submit", str(CONFIG), *TINY, "train.steps=5", f"train.out_dir={run}", "--cluster", "debug"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5]
    assert torch.load(run / "latest.pt", map_location="cpu", weights_only=True)["step"] == 5
    assert len(read_events(run)["starts"]) == 2


@pytest.mark.slow
def test_local_cluster_runs_a_child_process_to_completion(tmp_path, capsys) -> None:
    run = tmp_path / "loc"
    assert main(["submit", str(CONFIG), *TINY, f"train.out_dir={run}", "--cluster", "local", "--wait"]) == 0
    assert "final job states:" in capsys.readouterr().out
    assert (read_json(run / "status.json") or {})["state"] == "completed"
    (start,) = read_events(run)["starts"]
    assert start["cluster"] == "local" and start["world_size"] == 1
    assert (run / "stdout.log").resolve().exists()
