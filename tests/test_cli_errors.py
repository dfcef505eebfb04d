"""Every expected failure of every verb ends in ONE `error: ...` line naming what and where, exit status 2, no
traceback (unless -v or USJEPA_DEBUG=1); a bug keeps its traceback. Each category runs the real command line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usjepa.data.errors import DataError
from usjepa.data.splits import SplitLeakageError
from usjepa.errors import UsjepaError, run_reporting, user_message

ROOT = Path(__file__).resolve().parents[1]
SALT = str(ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml")
TINY = ["train.progress=false", "train.threads=1", "data.batch_size=4", "train.steps=3", "optim.warmup=0"]


def _cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", **env}
    if "USJEPA_DEBUG" not in env:
        environ.pop("USJEPA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "usjepa.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=cwd or ROOT, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_the_error_classes_share_one_base() -> None:
    from usjepa.config import ConfigError
    from usjepa.eval.splits import PatientLeakageError
    from usjepa.models.checkpoint_io import CheckpointError
    from usjepa.train import TrainingError
    from usjepa.train.distributed import DistributedEnvError

    for cls in (ConfigError, CheckpointError, DataError, SplitLeakageError,
                PatientLeakageError, TrainingError, DistributedEnvError):
        assert issubclass(cls, UsjepaError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(TrainingError, RuntimeError)  # old catches still hold


def test_os_errors_name_the_path_and_bugs_keep_their_traceback(capsys) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/scratch/run/latest.pt")
    assert user_message(full) == ("No space left on device '/scratch/run/latest.pt': the disk is full: free space "
                                  "there or point the output (train.out_dir, --out) at another disk")
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/x.csv")
    assert "Permission denied '/data/x.csv': you may not read or write there" in user_message(denied)
    assert user_message(FileNotFoundError("teacher checkpoint 'a.pt' does not exist")) == \
        "teacher checkpoint 'a.pt' does not exist"
    assert user_message(UsjepaError("two\n  lines")) == "two lines"

    def raise_(exc):
        raise exc

    assert run_reporting(lambda: raise_(denied)) == 2
    assert capsys.readouterr().err == "error: " + user_message(denied) + "\n"
    for bug in (ZeroDivisionError("division by zero"), KeyError("x"), ValueError("bad"),
                OSError(errno.EBADF, "Bad file descriptor")):
        assert user_message(bug) is None
        with pytest.raises(type(bug)):
            run_reporting(lambda bug=bug: raise_(bug))


def test_write_errors_without_a_file_name_name_the_file_being_written() -> None:
    def save(path: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # what a failed write() reports: no file name

    try:
        save("/scratch/run/latest.pt")
    except OSError as e:
        assert user_message(e).startswith("No space left on device '/scratch/run/latest.pt': the disk is full")


@pytest.mark.slow
def test_config_errors_and_the_traceback_on_request(tmp_path) -> None:
    _one_error_line(_cli("config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    _one_error_line(_cli("config", SALT, "optim.lrr=1"), "optim.lrr", "optim.lr")
    verbose = _cli("config", str(tmp_path / "nope.yaml"), "-v")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: config file")
    assert "Traceback" in _cli("config", str(tmp_path / "nope.yaml"), USJEPA_DEBUG="1").stderr


@pytest.mark.slow
def test_checkpoint_and_broken_safetensors_errors(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    _one_error_line(_cli("export", str(junk), "--out", str(tmp_path / "e.safetensors")), str(junk))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 64)
    _one_error_line(_cli("teacher", "inspect", str(broken)), str(broken), "safetensors")
    _one_error_line(_cli("teacher", "verify", str(broken), "--family", "native"), str(broken))


@pytest.mark.slow
def test_missing_paths_and_a_full_disk(tmp_path) -> None:
    _one_error_line(_cli("status", str(tmp_path / "nothing")), "nothing", "not a folder")
    _one_error_line(_cli("resubmit", str(tmp_path / "nothing")), "nothing")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to fill a disk with")
    out = tmp_path / "sim"
    (out / "images").mkdir(parents=True)
    os.symlink("/dev/full", out / "images" / "p000000_f00.png")  # the first image lands on a full 'disk'
    _one_error_line(_cli("simulate", "--out", str(out), "--n", "2", "--size", "32"),
                    "No space left on device", "p000000_f00.png", "the disk is full")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> Path:
    from usjepa.data.sim.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("clisim") / "sim"
    simulate_dataset(root, 16, "lesion", seed=1, size=64, frames_per_patient=2)
    return root


@pytest.mark.slow
def test_data_errors_of_a_pretraining_run(tmp_path, sim_root) -> None:
    missing = tmp_path / "missing.csv"
    _one_error_line(_cli("pretrain", SALT, "data.source=manifest", f"data.manifest={missing}",
                         f"train.out_dir={tmp_path / 'r1'}", *TINY), str(missing), "does not exist")
    table = pd.read_csv(sim_root / "manifest.csv")
    leak = table.assign(path=[str(sim_root / p) for p in table["path"]], mask_path="")
    leak.loc[leak.index[:2], "split"] = ["train", "test"]
    leak.loc[leak.index[:2], "patient_id"] = "P-LEAK"
    leak.to_csv(tmp_path / "leak.csv", index=False)
    _one_error_line(_cli("pretrain", SALT, "data.source=manifest", f"data.manifest={tmp_path / 'leak.csv'}",
                         f"train.out_dir={tmp_path / 'r2'}", *TINY), "P-LEAK", "more than one split")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(8):
        (bad / f"broken{i}.png").write_bytes(b"\x89PNG truncated")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(bad / "good.png")
    _one_error_line(_cli("pretrain", SALT, "data.source=folder", f"data.root={bad}", "data.augment=false",
                         f"train.out_dir={tmp_path / 'r3'}", *TINY), "data.bad_item_threshold", "broken")


@pytest.mark.slow
def test_a_diverging_run_is_one_line(tmp_path, sim_root) -> None:
    out = tmp_path / "nan"
    _one_error_line(_cli("pretrain", SALT, f"data.root={sim_root}", f"train.out_dir={out}", "optim.lr=1e30",
                         "optim.start_lr=1e30", *TINY), "loss became nan", "optim.lr")
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def test_an_error_raised_in_a_dataloader_worker_keeps_its_own_message(tmp_path) -> None:
    """torch re-raises a worker's DataError with the worker's traceback as its message: one line still."""
    import torch

    from usjepa.data import DataConfig, build_dataset, collate_skip_bad

    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(tmp_path / "a.png")
    for i in range(3):
        (tmp_path / f"b{i}.png").write_bytes(b"junk")
    ds = build_dataset(DataConfig(source="folder", root=str(tmp_path)), None, (16, 16), augment=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip_bad)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)
    msg = user_message(info.value)
    assert msg.startswith("1 of 4 items are unreadable") and "data.bad_item_threshold" in msg and "File " not in msg
