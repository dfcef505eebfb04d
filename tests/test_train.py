"""The trainer end to end on simulated data: learning, exact resume, frozen teacher, failures, DDP."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from usjepa.config import ConfigError, load_config
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.train import TrainingError, run_training
from usjepa.train.checkpoint import load_training_checkpoint

CONFIGS = {
    "salt": "configs/pretrain/salt_vit_tiny_sim.yaml",
    "mae": "configs/pretrain/mae_vit_tiny_sim.yaml",
    "ema_jepa": "configs/pretrain/ema_jepa_vit_tiny_sim.yaml",
}


def _cfg(objective: str, out: Path, sim_root: str, *extra: str):
    ov = [
        f"train.out_dir={out}",
        f"data.root={sim_root}",
        "data.num_images=96",
        "data.batch_size=16",
        "train.progress=false",
        "train.log_every=1",
        "train.ckpt_every=1000",
        "data.augment=true",
        *extra,
    ]
    return load_config(CONFIGS[objective], ov)


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


def test_tiny_salt_run_lowers_its_loss(tmp_path, sim_root):
    res = run_training(_cfg("salt", tmp_path / "run", sim_root, "train.steps=40"))
    assert res.status == "completed" and res.step == 40
    loss = _losses(tmp_path / "run")
    first = sum(loss[s] for s in range(1, 6)) / 5
    last = sum(loss[s] for s in range(36, 41)) / 5
    assert last < 0.8 * first, (first, last)
    for name in ("config.yaml", "env.json", "latest.pt", "encoder.safetensors", "status.json"):
        assert (tmp_path / "run" / name).exists(), name
    from teachers.frozen import bf16_supported

    precision = json.loads((tmp_path / "run" / "env.json").read_text())["precision"]
    assert precision["student"] == "fp32"  # train.precision=auto on a CPU
    assert precision["teacher"] == ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")  # teacher.precision=auto


@pytest.mark.parametrize("objective", ["salt", "mae", "ema_jepa"])
def test_resume_gives_identical_metrics_and_weights(tmp_path, sim_root, objective):
    n = 4
    full = run_training(_cfg(objective, tmp_path / "full", sim_root, f"train.steps={2 * n}"))
    calls = {"k": 0}

    def stop_after_n() -> bool:
        calls["k"] += 1
        return calls["k"] == n

    first = run_training(
        _cfg(objective, tmp_path / "split", sim_root, f"train.steps={2 * n}"), should_stop=stop_after_n
    )
    assert first.status == "preempted" and first.step == n
    assert load_training_checkpoint(tmp_path / "split" / "latest.pt")["step"] == n
    second = run_training(_cfg(objective, tmp_path / "split", sim_root, f"train.steps={2 * n}"))
    assert second.status == "completed" and full.status == "completed"
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(b) == list(range(1, 2 * n + 1))  # no duplicated or missing steps
    assert [a[s] for s in range(n + 1, 2 * n + 1)] == [b[s] for s in range(n + 1, 2 * n + 1)]
    wa, wb = load_file(tmp_path / "full" / "encoder.safetensors"), load_file(tmp_path / "split" / "encoder.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_teacher_is_frozen_throughout_a_salt_run(tmp_path, sim_root, monkeypatch):
    import usjepa.train.build as build

    seen = {}
    real = build.build_teacher

    def spy(cfg):
        t = real(cfg)
        seen["teacher"] = t
        seen["before"] = {k: v.clone() for k, v in t.state_dict().items()}
        return t

    monkeypatch.setattr(build, "build_teacher", spy)
    run_training(_cfg("salt", tmp_path / "run", sim_root, "train.steps=3"))
    t = seen["teacher"]
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    after = t.state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, sim_root, monkeypatch):
    from usjepa.objectives import SALT

    cfg = _cfg("salt", tmp_path / "run", sim_root, "train.steps=6", "train.ckpt_every=2")
    real = SALT.forward
    count = {"k": 0}

    def poisoned(self, batch):
        loss, logs = real(self, batch)
        count["k"] += 1
        return (loss * float("nan") if count["k"] == 4 else loss), logs

    monkeypatch.setattr(SALT, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*latest.pt"):
        run_training(cfg)
    assert load_training_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 2
    assert '"state": "failed"' in (tmp_path / "run" / "status.json").read_text()


def test_corrupt_or_mismatched_checkpoint_is_an_error_not_a_restart(tmp_path, sim_root):
    run = tmp_path / "run"
    run_training(_cfg("mae", run, sim_root, "train.steps=2"))
    config = (run / "config.yaml").read_text()
    # a different architecture for the same folder: refused, naming what differs
    with pytest.raises(ConfigError, match=r"other settings: model.depth 4 -> 3"):
        run_training(_cfg("mae", run, sim_root, "train.steps=4", "model.depth=3"))
    assert (run / "config.yaml").read_text() == config
    # truncated files: refused, naming each file; nothing is trained from step 0 over them
    for name in ("latest.pt", "step_2.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*latest.pt.*truncated.*step_2.pt"):
        run_training(_cfg("mae", run, sim_root, "train.steps=4"))
    assert _losses(run) and max(_losses(run)) == 2
    assert json.loads((run / "status.json").read_text())["state"] == "completed"  # the old run's status is kept


def test_validation_keeps_best_checkpoint(tmp_path, sim_root):
    run_training(
        _cfg(
            "ema_jepa",
            tmp_path / "run",
            sim_root,
            "train.steps=6",
            "train.val_every=3",
            "train.val_fraction=0.2",
            "train.val_batches=1",
        )
    )
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        vals = [float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]]
    assert len(vals) == 2
    best = load_training_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_val"] == pytest.approx(min(vals), rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, sim_root):
    """torchrun, gloo on CPU: 2 ranks x 8 images equal 1 process x 16 images, step for step (per-sample masks:
    the reference samplers truncate per rank, as upstream, so their masks differ between the two)."""
    common = [
        "mask.sampler=per_sample",
        "train.steps=4",
        f"data.root={sim_root}",
        "data.num_images=96",
        "data.batch_size=16",
        "train.progress=false",
        "train.log_every=1",
        "train.threads=1",
    ]
    single = tmp_path / "single"
    run_training(load_config(CONFIGS["ema_jepa"], common + [f"train.out_dir={single}"]))
    ddp = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "usjepa.cli",
            "pretrain",
            CONFIGS["ema_jepa"],
            *common,
            f"train.out_dir={ddp}",
        ],
        check=True,
        env=env,
        timeout=600,
        cwd=Path(__file__).parents[1],
    )
    a, b = _losses(single), _losses(ddp)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-6)


def test_salt_from_cached_targets_matches_live_teacher(tmp_path, sim_root):
    from teachers.cache import build_cache

    live_cfg = _cfg("salt", tmp_path / "live", sim_root, "train.steps=3", "data.augment=false")
    grid = tuple(s // live_cfg.model.patch_size for s in live_cfg.model.img_size)
    cache = build_cache(live_cfg.teacher, live_cfg.data, tuple(live_cfg.model.img_size), tmp_path / "cache",
                        live_cfg.objective.target_norm, grid=grid, dtype="float32", progress=False)
    run_training(live_cfg)
    cached_cfg = _cfg("salt", tmp_path / "cached", sim_root, "train.steps=3", "data.augment=false",
                      f"teacher.cache={cache}")
    run_training(cached_cfg)
    a, b = _losses(tmp_path / "live"), _losses(tmp_path / "cached")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6)
    # a cache made for another teacher is refused, naming the difference
    with pytest.raises(Exception, match="teacher"):
        run_training(_cfg("salt", tmp_path / "other", sim_root, "train.steps=1", "data.augment=false",
                          f"teacher.cache={cache}", "teacher.options.seed=7"))


def test_region_conditioned_run_uses_the_simulator_fan_masks(tmp_path, sim_root, monkeypatch):
    """USrc-JEPA: every context and target patch of every batch lies inside the item's fan."""
    import usjepa.masks.collator as collator_mod

    seen, outside = [], []
    real_call = collator_mod.MaskCollator.__call__

    def spy(self, items):
        batch = real_call(self, items)
        valid = collator_mod.patch_validity(batch["region"], self.patch_size, self.min_fraction).flatten(1)
        outside.append(bool((~valid).any()))  # the fans leave patches out: the check below is not vacuous
        for m in batch["masks"]:
            for idx, ok in ((m.context, m.context_valid), (m.targets.flatten(1), None if m.targets_valid is None
                                                              else m.targets_valid.flatten(1))):
                inside = torch.gather(valid, 1, idx)
                seen.append(bool(inside[ok].all()) if ok is not None else bool(inside.all()))
        return batch

    monkeypatch.setattr(collator_mod.MaskCollator, "__call__", spy)
    cfg = load_config("configs/pretrain/usjepa_vit_tiny_sim.yaml",
                      [f"train.out_dir={tmp_path / 'run'}", f"data.root={sim_root}", "data.num_images=96",
                       "data.batch_size=16", "train.progress=false", "train.steps=3", "train.log_every=1"])
    assert cfg.mask.region.enabled
    run_training(cfg)
    assert seen and all(seen) and any(outside)
    assert len(_losses(tmp_path / "run")) == 3
