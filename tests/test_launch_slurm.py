"""Against a real SLURM (the single-node cluster of `bash launch/slurm_local.sh up`): submit, sweep as one job
array, preemption -> requeue -> resume with identical weights, DDP over two SLURM tasks, and `usjepa status`.

All jobs are submitted at once by one module fixture, so their start-up and requeue delays overlap.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch.runfiles import read_events, read_json
from launch.status import collect_status
from launch.submit import resolve_run_config, slurm_job_states
from usjepa.cli import main
from usjepa.data import build_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
STEPS = 40
PREEMPT_AFTER = 5  # signal the job once metrics.csv shows this step
TINY = ["data.num_images=64", "data.batch_size=8", f"train.steps={STEPS}", "train.log_every=1",
        "train.ckpt_every=1000", "train.progress=false", "train.threads=1", "train.seed=3",
        "launch.cpus_per_task=1", "launch.time=10", "launch.max_requeues=2",
        # DDP vs one process compares numbers: bf16 rounding would depend on the split, and reference masks are
        # truncated to each rank's batch minimum (as upstream), so the comparison uses per-sample masks
        "teacher.precision=fp32", "mask.sampler=per_sample"]
DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL")
DEADLINE_S = 420


def _cluster_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module", autouse=True)
def _need_cluster() -> None:
    if shutil.which("sinfo") and not _cluster_answers():
        if os.environ.get("USJEPA_REQUIRE_SLURM") == "1":
            pytest.fail("USJEPA_REQUIRE_SLURM=1 but the SLURM controller does not answer: "
                        "run `bash launch/slurm_local.sh up` first")
        pytest.skip("sinfo is on PATH but no SLURM controller answers; start one with `bash launch/slurm_local.sh up`")


def _submit(run_dir: Path, *extra: str) -> str:
    assert main(["submit", str(CONFIG), *TINY, *extra, f"train.out_dir={run_dir}", "--cluster", "slurm"]) == 0
    return str(read_json(run_dir / "launch.json")["job_id"])


def _metric_steps(run_dir: Path) -> list[int]:
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    except (OSError, ValueError):
        return []


def _wait(job_ids: list[str], deadline: float, until: tuple[str, ...] = DONE_STATES) -> dict[str, str]:
    """The jobs' states once every one is in `until` (ended, by default); a test failure at `deadline`."""
    states: dict[str, str] = {}
    while time.time() < deadline:
        states = slurm_job_states(job_ids)
        if all(states.get(j, "").upper() in until for j in job_ids):
            return states
        time.sleep(2)
    pytest.fail(f"SLURM jobs not in {until} by the deadline: {states}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Submit every job of this module, preempt one mid-run, and wait for all of them."""
    root = tmp_path_factory.mktemp("slurm_runs")
    start = time.time()
    # simulate the shared dataset once here, rather than in seven jobs at the same time
    cfg = resolve_run_config(CONFIG, [*TINY, f"train.out_dir={root / 'warm'}"])
    build_dataset(cfg.data, split="train", img_size=tuple(cfg.model.img_size), augment=False)
    deadline = start + DEADLINE_S
    jobs = {
        "ref": _submit(root / "ref"),
        "pre": _submit(root / "pre"),
        "ddp": _submit(root / "ddp", "launch.tasks_per_node=2"),
    }
    sweep_file = root / "grid.yaml"
    sweep_file.write_text(
        f"base: {CONFIG}\nout_dir: {root / 'sweep'}\n"
        f"overrides: [{', '.join(TINY)}, train.steps=3, launch.array_parallelism=4]\n"
        "grid:\n  optim.lr: [1.0e-3, 3.0e-4]\n  mask.preset: [usjepa, ijepa]\n")
    assert main(["sweep", str(sweep_file), "--cluster", "slurm"]) == 0
    members = sorted(p.parent for p in (root / "sweep").glob("*/launch.json"))
    member_jobs = [str(read_json(m / "launch.json")["job_id"]) for m in members]

    # preempt "pre" the way a scheduler does: the preemption signal to every task of the job
    while max(_metric_steps(root / "pre"), default=0) < PREEMPT_AFTER:
        status = read_json(root / "pre" / "status.json") or {}
        assert status.get("state") not in ("completed", "failed"), f"'pre' ended before the signal: {status}"
        assert time.time() < deadline, "'pre' never reached the preemption step"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", jobs["pre"]], check=True)
    signalled_at = max(_metric_steps(root / "pre"))

    states = _wait([*jobs.values(), *member_jobs], deadline)
    return {"root": root, "jobs": jobs, "members": members, "member_jobs": member_jobs, "states": states,
            "signalled_at": signalled_at, "sweep_file": sweep_file, "wall_s": time.time() - start}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "latest.pt", map_location="cpu", weights_only=True)
    out = {}
    for name, value in ckpt.items():
        if isinstance(value, dict) and value and all(isinstance(t, torch.Tensor) for t in value.values()):
            out.update({f"{name}.{k}": t for k, t in value.items()})
    assert out, f"no module weights found in {run_dir / 'latest.pt'}"
    return out


def test_submitted_run_completes_and_leaves_a_checkpoint(runs) -> None:
    ref = runs["root"] / "ref"
    assert runs["states"][runs["jobs"]["ref"]] == "COMPLETED"
    assert (read_json(ref / "status.json") or {}).get("state") == "completed"
    assert torch.load(ref / "latest.pt", map_location="cpu", weights_only=True)["step"] == STEPS
    assert _metric_steps(ref) == list(range(1, STEPS + 1))
    assert (ref / "config.yaml").exists() and (ref / "env.json").exists()
    assert (ref / "stdout.log").resolve().exists() and (ref / "stderr.log").resolve().exists()


def test_sweep_runs_as_one_job_array_with_four_run_folders(runs, capsys) -> None:
    members, ids = runs["members"], runs["member_jobs"]
    assert len(members) == 4
    assert len({i.split("_")[0] for i in ids}) == 1, f"expected one array job, got {ids}"
    assert sorted(i.split("_")[1] for i in ids) == ["0", "1", "2", "3"]
    for m in members:
        assert (read_json(m / "status.json") or {}).get("state") == "completed", m
        assert (m / "latest.pt").exists() and (m / "config.yaml").exists()
    # submitting the same sweep again finds nothing left to do
    assert main(["sweep", str(runs["sweep_file"]), "--cluster", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and out.count("skip ") == 4


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(runs) -> None:
    pre, ref = runs["root"] / "pre", runs["root"] / "ref"
    assert runs["states"][runs["jobs"]["pre"]] == "COMPLETED"
    events = read_events(pre)
    assert len(events["requeues"]) == 1 and len(events["starts"]) == 2
    stopped = events["requeues"][0]["step"]
    assert runs["signalled_at"] <= stopped < STEPS
    assert events["starts"][1]["restart_count"] == 1
    # no duplicated steps, no restart from step 0: the clock (elapsed_s) restarts right after the saved step
    with open(pre / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    elapsed = [float(r["elapsed_s"]) for r in rows]
    drops = [int(rows[i]["step"]) for i in range(1, len(rows)) if elapsed[i] < elapsed[i - 1]]
    assert drops == [stopped + 1], f"expected the resumed clock at step {stopped + 1}, saw drops at {drops}"
    with open(ref / "metrics.csv", newline="") as f:
        ref_loss = [r["loss"] for r in csv.DictReader(f)]
    assert [r["loss"] for r in rows] == ref_loss  # same seed, same data order, same losses
    a, b = _weights(pre), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the preempted and the uninterrupted run"


def test_two_slurm_tasks_train_with_ddp_like_one_process(runs) -> None:
    ddp, ref = runs["root"] / "ddp", runs["root"] / "ref"
    assert runs["states"][runs["jobs"]["ddp"]] == "COMPLETED"
    start = read_events(ddp)["starts"][0]
    assert (start["num_tasks"], start["world_size"], start["dist_source"]) == (2, 2, "slurm")
    a, b = _weights(ddp), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_status_reports_every_job(runs, capsys) -> None:
    root = runs["root"]
    df = collect_status(root).set_index("run")
    expected = {"ref", "pre", "ddp", *(f"sweep/{m.name}" for m in runs["members"])}
    assert set(df.index) == expected
    assert (df["state"] == "COMPLETED").all(), df["state"].to_dict()
    assert df.loc["pre", "requeues"] == 1 and df.loc["ref", "requeues"] == 0
    assert df.loc["pre", "step"] == STEPS and df.loc["pre", "total"] == STEPS
    assert df.loc["ref", "job_id"] == runs["jobs"]["ref"]
    assert main(["status", str(root / "sweep")]) == 0
    assert capsys.readouterr().out.count("COMPLETED") == 4
    print(f"SLURM module wall time: {runs['wall_s']:.0f}s")
