"""The large-run options through the training loop on CPU: FSDP2 (`train.sharding=fsdp`, 2 gloo processes) equals
the 1-process run and resumes from and into unsharded checkpoints; `train.compile=true` runs; the keys are checked."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from usjepa.config import ConfigError, load_config
from usjepa.train import run_training
from usjepa.train.checkpoint import load_training_checkpoint

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/pretrain/salt_vit_tiny_sim.yaml")
STEPS = 4


def _overrides(out: Path, sim_root: str, *extra: str) -> list[str]:
    return [f"train.out_dir={out}", f"data.root={sim_root}", "data.num_images=96", "data.batch_size=8",
            "mask.sampler=per_sample",  # per-sample masks are the same whatever the rank count (see test_train)
            f"train.steps={STEPS}", "train.progress=false", "train.log_every=1", "train.threads=1",
            "train.ckpt_every=1000", "model.depth=2", *extra]


def _stop_at(step: int | None):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return step is not None and calls["n"] == step

    return should_stop


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


def _worker(rank: int, world: int, store: str, port: int, jobs: list[tuple[list[str], int | None]]) -> None:
    """One rank of a torchrun-like job: the environment says rank / world, the group is already joined."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for overrides, stop in jobs:
            run_training(load_config(CONFIG, overrides), should_stop=_stop_at(stop))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    for part in ("model", "predictor"):
        assert set(a[part]) == set(b[part]), (what, part)
        for k, v in a[part].items():
            torch.testing.assert_close(v, b[part][k], atol=1e-5, rtol=0, msg=f"{what}: {part}.{k}")
    for i, s in a["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s[k], b["optimizer"]["state"][i][k], atol=1e-5, rtol=0, msg=f"{what}: {k}")


@pytest.mark.slow
def test_two_process_fsdp_run_equals_one_process_and_resumes_both_ways(tmp_path, sim_root):
    """ref: 1 process, 4 steps. A: FSDP on 2 ranks (teacher replicated) to step 2, then resumed by 1 process (no
    sharding) to 4. B: 1 process to step 2, then resumed by FSDP on 2 ranks (teacher sharded too, activation
    checkpointing on) to 4. Losses and weights equal ref within 1e-5."""
    torch.set_num_threads(1)
    ref, a, b = tmp_path / "ref", tmp_path / "a", tmp_path / "b"
    run_training(load_config(CONFIG, _overrides(ref, sim_root)))
    assert run_training(load_config(CONFIG, _overrides(b, sim_root)), should_stop=_stop_at(2)).step == 2
    fsdp = ["train.sharding=fsdp"]
    b_opts = ["train.shard_teacher=true", "train.activation_checkpointing=true"]  # composes with FSDP2
    jobs = [(_overrides(a, sim_root, *fsdp), 2), (_overrides(b, sim_root, *fsdp, *b_opts), None)]
    mp.start_processes(_worker, args=(2, str(tmp_path / "store"), _free_port(), jobs), nprocs=2, join=True,
                       start_method="fork")  # the parent has imported everything already: no re-import
    sharded_half = load_training_checkpoint(a / "latest.pt")
    assert sharded_half["step"] == 2
    env = json.loads((a / "env.json").read_text())["large_run"]
    assert env["sharding"] == "fsdp" and env["fsdp_units"] == {"model": 2, "predictor": 2}
    assert env["teacher_placement"] == "replicated"
    env_b = json.loads((b / "env.json").read_text())["large_run"]
    assert env_b["teacher_placement"] == "sharded" and env_b["checkpointed_blocks"] == 2 + 2
    run_training(load_config(CONFIG, _overrides(a, sim_root)))  # the sharded run's file, resumed unsharded

    want = _losses(ref)
    assert sorted(want) == list(range(1, STEPS + 1))
    for run in (a, b):  # a: steps 1-2 sharded, 3-4 not; b: the other way round
        got = _losses(run)
        assert sorted(got) == sorted(want)
        for s in want:
            assert got[s] == pytest.approx(want[s], abs=1e-5), (run.name, s)
    final = load_training_checkpoint(ref / "latest.pt")
    _assert_same_state(load_training_checkpoint(a / "latest.pt"), final, "sharded, then resumed unsharded")
    _assert_same_state(load_training_checkpoint(b / "latest.pt"), final, "unsharded, then resumed sharded")
    from safetensors.torch import load_file

    enc_ref, enc_b = load_file(ref / "encoder.safetensors"), load_file(b / "encoder.safetensors")
    assert set(enc_b) == set(enc_ref)  # exported by the sharded run: gathered, same keys
    for k, v in enc_ref.items():
        torch.testing.assert_close(enc_b[k], v, atol=1e-5, rtol=0, msg=k)
    moved = [k for k, v in final["model"].items() if (v - sharded_half["model"][k]).abs().max() > 1e-6]
    assert moved  # steps 3-4 changed the weights: the agreement is not that of an untouched state


def test_compile_runs_through_the_loop(tmp_path, sim_root, monkeypatch):
    """`train.compile=true` compiles student, predictor and teacher; dynamo traces them in a real run. Inductor on
    a CPU takes minutes, so the test swaps in dynamo's eager backend (same graphs, no code generation), which
    also makes the losses equal to an uncompiled run's."""
    import torch._dynamo

    import usjepa.train.placement as placement

    assert placement.COMPILE_BACKEND == "inductor"  # what users get
    monkeypatch.setattr(placement, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    extra = ["train.steps=2", "mask.sampler=reference"]  # reference masks: no padding, fewest recompiles
    run_training(load_config(CONFIG, _overrides(tmp_path / "eager", sim_root, *extra)))
    run_training(load_config(CONFIG, _overrides(tmp_path / "comp", sim_root, *extra, "train.compile=true")))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()
    env = json.loads((tmp_path / "comp" / "env.json").read_text())["large_run"]
    assert env["compile"] is True and env["compile_backend"] == "eager"
    assert env["compiled"] == ["model", "predictor", "teacher"]
    assert json.loads((tmp_path / "eager" / "env.json").read_text())["large_run"]["compile"] is False
    want, got = _losses(tmp_path / "eager"), _losses(tmp_path / "comp")
    assert sorted(got) == [1, 2]
    for s in want:
        assert got[s] == pytest.approx(want[s], abs=1e-5)


def test_sharding_key_is_validated(tmp_path, sim_root):
    base = _overrides(tmp_path / "run", sim_root)
    assert load_config(CONFIG, base).train.sharding == "none"
    assert load_config(CONFIG, [*base, "train.sharding=fsdp"]).train.sharding == "fsdp"
    with pytest.raises(ConfigError, match=r"train.sharding='fsd' is not one of none, fsdp; did you mean 'fsdp'"):
        load_config(CONFIG, [*base, "train.sharding=fsd"])
    with pytest.raises(ConfigError, match="objective.name=salt only, not 'ema_jepa'"):
        load_config(CONFIG, [*base, "train.sharding=fsdp", "objective.name=ema_jepa"])
    with pytest.raises(ConfigError, match="train.shard_teacher=true needs train.sharding=fsdp"):
        load_config(CONFIG, [*base, "train.shard_teacher=true"])
    with pytest.raises(ConfigError, match="train.probe_every=0"):
        load_config(CONFIG, [*base, "train.sharding=fsdp", "train.probe_every=5"])
    with pytest.raises(ConfigError, match="needs a distributed run .* set train.sharding=none"):
        run_training(load_config(CONFIG, [*base, "train.sharding=fsdp"]))  # a single process
    assert not (tmp_path / "run").exists()  # refused before the run folder is touched
