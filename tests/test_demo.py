"""The demo's stage chaining: a stage that stopped early stops the demo (nothing trains on an unfinished teacher)."""

import pytest

import usjepa.data
import usjepa.train
from usjepa.demo import run_demo
from usjepa.errors import UsjepaError
from usjepa.train.loop import TrainResult


def test_a_stage_stopped_by_a_signal_stops_the_demo_before_the_next_stage(tmp_path, monkeypatch) -> None:
    stages = []

    def fake_training(cfg, should_stop=None):
        stages.append(cfg.objective.name)
        return TrainResult("preempted", 17, tmp_path / "teacher")

    monkeypatch.setattr(usjepa.data, "build_dataset", lambda *a, **k: None)
    monkeypatch.setattr(usjepa.train, "run_training", fake_training)
    with pytest.raises(UsjepaError, match=r"stage 1 \(pixel-MAE teacher\) at step 17 .*again to resume"):
        run_demo(tmp_path / "demo")
    assert stages == ["mae"]  # the SALT stage never started
