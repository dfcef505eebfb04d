"""Resume never restarts silently and never overwrites: missing or damaged checkpoints, changed settings, runs that
extend, temp files of killed writers."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train import _cfg, _losses
from usjepa.config import ConfigError
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.train import run_training
from usjepa.train.checkpoint import load_training_checkpoint

STEPS = 6
COMMON = (f"train.steps={STEPS}", "train.ckpt_every=2", "train.keep_last=2")


def _stop_at(n: int):
    calls = {"k": 0}

    def should_stop() -> bool:
        calls["k"] += 1
        return calls["k"] == n

    return should_stop


def _same_weights(a, b) -> bool:
    wa, wb = load_file(a / "encoder.safetensors"), load_file(b / "encoder.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sim_root):
    """An uninterrupted run, and a copy of a run stopped at step 3 (latest.pt at 3, step_2.pt)."""
    root = tmp_path_factory.mktemp("resume")
    run_training(_cfg("salt", root / "full", sim_root, *COMMON))
    first = run_training(_cfg("salt", root / "stopped", sim_root, *COMMON), should_stop=_stop_at(3))
    assert (first.status, first.step) == ("preempted", 3)
    return root


def _stopped_copy(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference / "stopped", run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(reference / "stopped"), str(run)))
    return run


def test_a_missing_latest_resumes_from_the_newest_step_file(reference, tmp_path, sim_root, caplog):
    run = _stopped_copy(reference, tmp_path)
    (run / "latest.pt").unlink()
    (run / ".latest.pt.tmp999-abc").write_bytes(b"x" * 1000)  # a writer killed mid-save left this
    with caplog.at_level(logging.INFO):
        res = run_training(_cfg("salt", run, sim_root, *COMMON))
    assert res.status == "completed" and res.step == STEPS
    assert "latest.pt is missing: resuming from step_2.pt (step 2)" in caplog.text
    assert not (run / ".latest.pt.tmp999-abc").exists()
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))  # rows 3.. were redone once, not duplicated
    assert _same_weights(run, reference / "full")
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_4.pt", "step_6.pt"]


def test_a_flipped_byte_in_latest_falls_back_to_the_step_file(reference, tmp_path, sim_root, caplog):
    run = _stopped_copy(reference, tmp_path)
    data = bytearray((run / "latest.pt").read_bytes())
    w = load_training_checkpoint(run / "latest.pt")["predictor"]
    probe = next(t for t in w.values() if t.numel() > 64).flatten()[:16].numpy().tobytes()
    at = bytes(data).find(probe)
    assert at > 0
    data[at + 5] ^= 0x01
    (run / "latest.pt").write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        res = run_training(_cfg("salt", run, sim_root, *COMMON))
    assert res.step == STEPS
    assert "latest.pt' is damaged" in caplog.text and "resuming from step_2.pt" in caplog.text
    assert (run / "latest.pt.damaged").exists()  # kept for inspection, out of the way
    assert _same_weights(run, reference / "full")


def test_a_folder_whose_checkpoints_are_gone_is_refused_not_overwritten(reference, tmp_path, sim_root):
    run = _stopped_copy(reference, tmp_path)
    for p in [run / "latest.pt", *run.glob("step_*.pt")]:
        p.unlink()
    metrics = (run / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match=r"holds a run \(status.json.*no checkpoint to resume from"):
        run_training(_cfg("salt", run, sim_root, *COMMON))
    assert (run / "metrics.csv").read_text() == metrics
    assert json.loads((run / "status.json").read_text())["state"] == "preempted"


def test_changed_settings_are_refused_forced_or_extended(reference, tmp_path, sim_root):
    run = _stopped_copy(reference, tmp_path)
    config = (run / "config.yaml").read_text()
    for change in ("optim.lr=2e-3", "data.num_images=80", "teacher.options.seed=7"):
        with pytest.raises(ConfigError, match=change.split("=")[0]):
            run_training(_cfg("salt", run, sim_root, *COMMON, change))
    assert (run / "config.yaml").read_text() == config
    assert load_training_checkpoint(run / "latest.pt")["step"] == 3
    res = run_training(_cfg("salt", run, sim_root, *COMMON, "optim.lr=2e-3", "train.resume=force"))
    assert res.step == STEPS
    (forced,) = json.loads("[" + (run / "resume_history.jsonl").read_text().strip() + "]")
    assert forced["mode"] == "force" and forced["at_step"] == 3 and forced["trajectory_changed"] == ["optim.lr"]
    # extending a finished run: allowed, recorded, the schedules follow the longer cosine
    res = run_training(_cfg("salt", run, sim_root, *COMMON, "optim.lr=2e-3", "train.resume=force",
                            f"train.steps={STEPS + 2}"))
    assert res.step == STEPS + 2 and sorted(_losses(run)) == list(range(1, STEPS + 3))
    history = [json.loads(line) for line in (run / "resume_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {"train.steps": [STEPS, STEPS + 2]} and history[-1]["at_step"] == STEPS
    # train.resume=never refuses a used folder
    with pytest.raises(ConfigError, match="train.resume=never"):
        run_training(_cfg("salt", run, sim_root, *COMMON, "train.resume=never"))


def test_checkpoints_with_the_retired_sampler_and_scaler_entries_still_load(tmp_path):
    """Format-1 checkpoints carried a "sampler" entry (never read) and a stub "scaler"; they load as before, and
    neither entry is required of a checkpoint any more."""
    old = {"version": 1, "step": 3, "objective": "salt", "model": {"w": torch.ones(2)}, "optimizer": {},
           "rng": {}, "config": {}, "sampler": {"epoch": 0, "offset": 12}, "scaler": None}
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_training_checkpoint(tmp_path / "old.pt")
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    torch.save({k: v for k, v in old.items() if k not in ("sampler", "scaler")}, tmp_path / "new.pt")
    assert load_training_checkpoint(tmp_path / "new.pt")["step"] == 3
