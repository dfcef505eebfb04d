"""The run folder's building blocks: atomic writes and file modes, checksums, the folder lock, config checks."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import usjepa.io.runfolder as runfolder_mod
from usjepa.config import ConfigError, load_config
from usjepa.io.atomic import atomic_write, atomic_write_text, temp_files_of
from usjepa.io.lock import FolderBusy, FolderLock
from usjepa.io.runfolder import RunFolder, config_changes
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.train.checkpoint import load_training_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"


@pytest.fixture
def umask():
    """Set a umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_and_exports_follow_the_umask(tmp_path, umask, mask, expected):
    from usjepa.models.checkpoint_io import export_encoder
    from usjepa.models.vit import build_vit

    umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}")
    enc = build_vit(arch="vit_tiny", img_size=(16, 16), patch_size=8, in_chans=1, cls_token=True, depth=1)
    export_encoder(enc, tmp_path / "encoder.safetensors")  # safetensors alone creates its files 0600
    assert _mode(tmp_path / "a.json") == expected
    assert _mode(tmp_path / "encoder.safetensors") == expected
    (tmp_path / "a.json").chmod(0o604)  # a file that exists keeps the mode its owner gave it
    atomic_write_text(tmp_path / "a.json", "[]")
    assert _mode(tmp_path / "a.json") == 0o604 and (tmp_path / "a.json").read_text() == "[]"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "latest.pt"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        with atomic_write(target, "wb") as f:
            f.write(b"half of the new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert temp_files_of(tmp_path, ["latest.pt"]) == []


def test_status_is_written_in_place_when_no_temp_file_fits(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.write_status(state="running", step=3)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder_mod, "atomic_write_text", disk_full)
    folder.write_status(state="failed", step=3, error="OSError: [Errno 28] No space left on device")
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["state"] == "failed" and "No space" in doc["error"]


def _tiny_state(step: int = 7) -> dict:
    return {"version": 2, "step": step, "objective": "salt", "model": {"w": torch.full((64,), 1.2345)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]},
            "rng": {"torch": torch.get_rng_state()}, "config": {"train": {"steps": 10}}}


def test_a_flipped_byte_in_a_tensor_is_caught_by_the_checksum(tmp_path):
    path = save_checkpoint(_tiny_state(), tmp_path / "latest.pt")
    assert load_training_checkpoint(path)["step"] == 7
    data = bytearray(path.read_bytes())
    pattern = torch.full((64,), 1.2345).numpy().tobytes()
    at = bytes(data).find(pattern)
    assert at > 0, "tensor bytes not found in the file"
    data[at + 100] ^= 0x10
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"]["w"][25] != 1.2345  # torch.load alone does not notice
    with pytest.raises(CheckpointError, match="latest.pt' is damaged.*checksum"):
        load_training_checkpoint(path)


def test_config_changes_split_trajectory_settings_from_harmless_ones():
    old = {"optim": {"lr": 1e-3}, "train": {"steps": 10, "log_every": 5}, "launch": {"time": 60},
           "data": {"root": "a", "num_workers": 0}}
    new = {"optim": {"lr": 2e-3}, "train": {"steps": 20, "log_every": 1}, "launch": {"time": 120},
           "data": {"root": "b", "num_workers": 4}}
    neutral, changed = config_changes(old, new)
    assert set(changed) == {"optim.lr", "data.root"}
    assert set(neutral) == {"train.steps", "train.log_every", "launch.time", "data.num_workers"}


def _cfg(out: Path, *extra: str):
    return load_config(CONFIG, [f"train.out_dir={out}", *extra])


def test_changed_settings_are_refused_or_forced_and_recorded(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.write_config(_cfg(folder.path, "optim.lr=1e-3"))
    (folder.path / "status.json").write_text(json.dumps({"state": "preempted", "step": 4, "ckpt_step": 4}))
    before = (folder.path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"optim.lr 0.001 -> 0.002.*train.resume=force"):
        folder.write_config(_cfg(folder.path, "optim.lr=2e-3"))
    assert (folder.path / "config.yaml").read_text() == before  # nothing overwritten
    folder.write_config(_cfg(folder.path, "optim.lr=1e-3", "train.steps=400"))  # extending is allowed
    folder.write_config(_cfg(folder.path, "optim.lr=2e-3", "train.steps=400", "train.resume=force"))
    folder.write_config(_cfg(folder.path, "optim.lr=2e-3", "train.steps=400", "train.resume=force"))  # no repeat
    history = folder.read_history()
    assert [h["mode"] for h in history] == ["auto", "force"]
    assert history[0]["changed"] == {"train.steps": [60, 400]} and history[0]["trajectory_changed"] == []
    assert history[1]["trajectory_changed"] == ["optim.lr"]
    # a folder where nothing was trained (a failed start) takes new settings
    fresh = RunFolder(tmp_path / "fresh")
    fresh.write_config(_cfg(fresh.path, "optim.lr=1e-3"))
    fresh.write_config(_cfg(fresh.path, "optim.lr=5e-3"))
    assert "0.005" in (fresh.path / "config.yaml").read_text()


def test_legacy_resume_values_still_load():
    assert _cfg(Path("x"), "train.resume=true").train.resume == "auto"
    assert _cfg(Path("x"), "train.resume=false").train.resume == "never"
    with pytest.raises(ConfigError, match="train.resume='sometimes'"):
        _cfg(Path("x"), "train.resume=sometimes")


def test_a_renamed_option_value_is_read_under_its_current_name(tmp_path, caplog):
    """teacher.family=usjepa (the native family's former name): accepted with one warning, written as native, and
    an older run folder that saved the old name resumes with the new one without counting as changed."""
    from teachers.cache import identity_diff
    from usjepa.config import load_spec

    with caplog.at_level("WARNING"):
        spec = load_spec(CONFIG, ["teacher.family=usjepa"])
    warned = sum("teacher.family=usjepa is now called native" in r.getMessage() for r in caplog.records)
    assert warned == 1  # once per load
    assert spec.teacher.family == "native"
    assert _cfg(tmp_path / "run", "teacher.family=usjepa").teacher.family == "native"  # the DictConfig layer too
    with pytest.raises(ConfigError, match=r"teacher.family='usjpa' is not one of native, .*did you mean 'native'"):
        _cfg(tmp_path / "run", "teacher.family=usjpa")  # a typo of the former name points at the current one
    folder = RunFolder(tmp_path / "run")
    folder.write_config(_cfg(folder.path, "teacher.family=native"))
    old = (folder.path / "config.yaml").read_text().replace("family: native", "family: usjepa")
    (folder.path / "config.yaml").write_text(old)  # as an older version wrote it
    (folder.path / "status.json").write_text(json.dumps({"state": "preempted", "step": 4, "ckpt_step": 4}))
    folder.write_config(_cfg(folder.path, "teacher.family=native"))  # not refused as a changed run
    assert folder.read_history() == [] and "family: native" in (folder.path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="teacher.family"):
        folder.write_config(_cfg(folder.path, "teacher.family=random"))  # a real change still is
    # a target cache written under the old name matches the same teacher today
    assert identity_diff({"teacher": {"family": "usjepa"}}, {"teacher": {"family": "native"}}) == []
    assert identity_diff({"teacher": {"family": "usjepa"}}, {"teacher": {"family": "mae"}}) != []


HOLD = """
import sys, time
from usjepa.io.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_the_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match=rf"in use by host \S+, pid {holder.pid}, SLURM job 4242"):
            FolderLock(tmp_path).acquire()
        with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):  # submission is refused as well
            RunFolder(tmp_path).write_config(_cfg(tmp_path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    lock = FolderLock(tmp_path)  # kill -9 leaves no stale lock
    assert lock.acquire() and lock.locked
    again = FolderLock(tmp_path)
    assert again.acquire()  # re-entrant within one process
    again.release()
    assert lock.held_here()
    lock.release()
    assert not lock.held_here()


def test_temp_files_of_killed_writers_are_cleaned(tmp_path):
    folder = RunFolder(tmp_path)
    for name in (".latest.pt.tmp123", ".step_40.pt.tmp99-abc", ".encoder.safetensors.tmp7", ".config.yaml.tmp1"):
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = {p.name for p in folder.clean_temp_files()}
    assert removed == {".latest.pt.tmp123", ".step_40.pt.tmp99-abc", ".encoder.safetensors.tmp7"}
    assert (tmp_path / ".config.yaml.tmp1").exists()  # not a checkpoint: may belong to a live submitter


def test_a_dangling_metrics_link_is_refused(tmp_path):
    (tmp_path / "metrics.csv").symlink_to(tmp_path / "elsewhere.csv")
    folder = RunFolder(tmp_path)
    assert "metrics.csv" in folder.run_state()
    with pytest.raises(ConfigError, match="metrics.csv' is a link to .*does not exist"):
        folder.reset_metrics(["step"], 0)
    assert (tmp_path / "metrics.csv").is_symlink()


def test_a_forked_child_does_not_keep_the_lock_alive(tmp_path):
    """Data-loader workers are forked: the lock must die with its holder, not with the holder's last child."""
    script = """
import os, sys, time
from usjepa.io.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
if os.fork() == 0:
    time.sleep(600)  # a worker that outlives its parent for a while
    os._exit(0)
print("locked", flush=True)
time.sleep(600)
"""
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()  # the holder dies; its forked child lives on
        holder.wait(30)
        lock = FolderLock(tmp_path)
        deadline = time.monotonic() + 20  # the child drops its copy in an at-fork hook: on a loaded machine it may
        while True:  # not have been scheduled yet when the holder dies; it must let go well before it exits
            try:
                assert lock.acquire()
                break
            except FolderBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        lock.release()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
