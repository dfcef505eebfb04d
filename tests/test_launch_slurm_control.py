"""`usjepa status / cancel / resubmit` against the local SLURM: pending array members, a sweep cancelled and
resubmitted as one array, `submit` on a completed run, and a hard `scontrol requeue` counted as a requeue."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from launch.runfiles import read_events, read_json
from launch.status import collect_status
from launch.submit import resolve_run_config
from tests.test_launch_slurm import _metric_steps, _need_cluster, _wait  # noqa: F401  (_need_cluster: autouse)
from usjepa.cli import main
from usjepa.data import build_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
TINY = ["data.num_images=24", "data.batch_size=4", "train.log_every=1", "train.progress=false", "train.threads=1",
        "model.depth=1", "predictor.depth=1", "launch.cpus_per_task=1", "launch.time=10"]
DEADLINE_S = 480


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder whose `data` the jobs share (simulated here once, not by every job)."""
    root = tmp_path_factory.mktemp("slurm_control")
    cfg = resolve_run_config(CONFIG, [*TINY, f"data.root={root / 'data'}", f"train.out_dir={root / 'warm'}"])
    build_dataset(cfg.data, split="train", img_size=tuple(cfg.model.img_size), augment=False)
    return root


def _tiny(root: Path) -> list[str]:
    return [*TINY, f"data.root={root / 'data'}"]


def test_hard_requeue_counts_as_a_requeue_and_the_run_resumes(root) -> None:
    run = root / "hard"
    assert main(["submit", str(CONFIG), *_tiny(root), "train.steps=200", "train.ckpt_every=5", f"train.out_dir={run}",
                 "--cluster", "slurm"]) == 0
    job = str(read_json(run / "launch.json")["job_id"])
    deadline = time.time() + DEADLINE_S
    while max(_metric_steps(run), default=0) < 7:
        assert time.time() < deadline, "the job never reached step 7"
        time.sleep(0.5)
    row = collect_status(run).iloc[0]
    # the job keeps stepping while the status is read: the saved step is any multiple of ckpt_every behind it
    assert row["state"] == "RUNNING" and row["step"] >= 7 and row["ckpt_step"] % 5 == 0
    assert row["ckpt_step"] <= row["step"] < 200
    subprocess.run(["scontrol", "requeue", job], check=True)  # what an admin or a node failure does
    states = _wait([job], deadline, until=("COMPLETED",))
    assert states[job] == "COMPLETED"
    events = read_events(run)
    restarts = max(int(s.get("restart_count") or 0) for s in events["starts"])
    assert restarts >= 1 and len(events["starts"]) >= 2
    row = collect_status(run).iloc[0]
    assert row["requeues"] == max(restarts, len(events["requeues"])) >= 1
    assert (row["step"], row["ckpt_step"], row["total"]) == (200, 200, 200)
    assert _metric_steps(run) == list(range(1, 201))  # resumed, no duplicated or lost rows


def test_pending_members_cancel_and_resubmit_of_a_sweep(root, capsys) -> None:
    sweep = root / "sweep.yaml"
    sweep.write_text(f"base: {CONFIG}\nout_dir: {root / 'sw'}\n"
                     f"overrides: [{', '.join(_tiny(root))}, train.steps=2, launch.array_parallelism=1]\n"
                     "grid:\n  optim.lr: [1.0e-3, 5.0e-4, 2.0e-4]\n")
    assert main(["sweep", str(sweep), "--cluster", "slurm"]) == 0
    capsys.readouterr()
    df = collect_status(root / "sw").set_index("run")
    ids = list(df["job_id"])
    assert len({i.split("_")[0] for i in ids}) == 1
    # one member at a time: the others wait, and are shown as waiting (not as "submitted" with no state)
    assert (df["state"] == "PENDING").sum() >= 2, df["state"].to_dict()
    assert main(["cancel", str(root / "sw")]) == 0
    assert capsys.readouterr().out.count("[scancel]") == 3
    deadline = time.time() + DEADLINE_S
    _wait(ids, deadline)
    assert set(collect_status(root / "sw")["state"]) == {"CANCELLED"}
    assert main(["resubmit", str(root / "sw"), "--cluster", "slurm"]) == 0
    out = capsys.readouterr().out
    assert out.count("resubmit (") == 3
    new_ids = [str(read_json(d / "launch.json")["job_id"]) for d in sorted((root / "sw").glob("optim*"))]
    assert len({i.split("_")[0] for i in new_ids}) == 1 and not set(new_ids) & set(ids)  # one new array
    _wait(new_ids, deadline)
    df = collect_status(root / "sw")
    assert set(df["state"]) == {"COMPLETED"} and set(df["step"]) == {2}
    # the same sweep, or one member's config, again: nothing to do
    member = sorted((root / "sw").glob("optim*"))[0]
    assert main(["submit", str(CONFIG), *_tiny(root), "train.steps=2", "optim.lr=0.001", "launch.array_parallelism=1",
                 f"train.out_dir={member}", "--cluster", "slurm"]) == 0
    assert "nothing submitted" in capsys.readouterr().out
    assert read_json(member / "launch.json")["job_id"] in new_ids
