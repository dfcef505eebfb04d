"""A plain `usjepa pretrain` process: SIGTERM / SIGINT save at the next step and the resumed run ends with the
weights of an uninterrupted run; a second run in the same folder is refused while the first holds it; a full disk
leaves status.json at "failed" with the reason."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train import CONFIGS
from usjepa.config import load_config
from usjepa.io.lock import FolderBusy
from usjepa.train import run_training

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STEPS = 24


def _overrides(out: Path, sim_root: str) -> list[str]:
    return [f"train.out_dir={out}", f"data.root={sim_root}", "data.num_images=96", "data.batch_size=16",
            "train.progress=false", "train.log_every=1", "train.ckpt_every=1000", "train.threads=1",
            f"train.steps={STEPS}"]


def _start(out: Path, sim_root: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "usjepa.cli", "pretrain", CONFIGS["salt"], *_overrides(out, sim_root)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(out: Path) -> list[int]:
    try:
        with open(out / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    except (OSError, ValueError):
        return []


@pytest.fixture(autouse=True)
def _keep_threads():
    """The runs here set train.threads=1 (as the subprocess does); the suite's thread count comes back after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sim_root) -> Path:
    out = tmp_path_factory.mktemp("signals") / "full"
    threads = torch.get_num_threads()
    run_training(load_config(CONFIGS["salt"], _overrides(out, sim_root)))
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, sim_root, uninterrupted,
                                                                            sig):
    out = tmp_path / "run"
    proc = _start(out, sim_root)
    try:
        deadline = time.time() + 300
        while max(_steps(out), default=0) < 3:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "the run never reached step 3"
            time.sleep(0.1)
        # a second run in the same folder is refused while the first holds it, and writes nothing there
        status = (out / "status.json").read_text()
        with pytest.raises(FolderBusy, match=rf"in use by host \S+, pid {proc.pid}"):
            run_training(load_config(CONFIGS["salt"], _overrides(out, sim_root)))
        assert (out / "status.json").read_text() == status  # the refused run wrote nothing there
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert f"caught {signal.Signals(sig).name}" in stderr
    stopped = json.loads((out / "status.json").read_text())
    assert stopped["state"] == "preempted" and stopped["stop_signal"] == signal.Signals(sig).name
    assert 3 <= stopped["step"] < STEPS and f"preempted at step {stopped['step']}" in stdout
    res = run_training(load_config(CONFIGS["salt"], _overrides(out, sim_root)))
    assert (res.status, res.step) == ("completed", STEPS)
    assert _steps(out) == list(range(1, STEPS + 1))
    a, b = load_file(out / "encoder.safetensors"), load_file(uninterrupted / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FULL_DISK = """
import sys
from usjepa.config import load_config
from usjepa.train import run_training
run_training(load_config(sys.argv[1], sys.argv[2:]))
"""


def test_a_full_disk_leaves_status_failed_with_the_reason(tmp_path, sim_root):
    """The run folder is a 1 MiB tmpfs in a private mount namespace: config and metrics fit, latest.pt does not."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root) for a private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = mnt / "run"
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && {sys.executable} -c '{FULL_DISK}' {CONFIGS['salt']} "
              + " ".join(_overrides(out, sim_root)) + " train.ckpt_every=2; rc=$?; "
              f"cat {out}/status.json; echo; ls -a {out}; exit $rc")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert res.returncode != 0 and "No space left on device" in res.stderr, res.stderr[-2000:]
    status = json.loads(res.stdout.splitlines()[0])
    assert status["state"] == "failed" and "No space left on device" in status["error"]
    assert ".latest.pt.tmp" not in res.stdout  # the half-written temp file was removed
