"""The published recipes run as written: SALT (RoPE, no CLS, V-JEPA masks) and V-Pixel steps on CPU, exact resume
with RoPE, US-JEPA's capped epochs, MAE's learning-rate rule, the recipe checks at config load, masks.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from usjepa.config import ConfigError, load_config
from usjepa.train import run_training
from usjepa.train.sampler import ResumableBatchSampler, balanced_epoch_items
from usjepa.train.schedules import optim_schedules, peak_lr

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "pretrain"


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("recipes") / "sim48")


def _small(out: Path, sim_root: str, *extra: str) -> list[str]:
    """CPU-sized overrides for a ViT-B/16 recipe: simulated data, 2 blocks; every other value as published."""
    return [f"train.out_dir={out}", f"data.root={sim_root}", "data.source=simulate", "data.num_images=48",
            "data.sim_size=96", "data.batch_size=4", "data.num_workers=0", "model.depth=2", "predictor.depth=2",
            "train.progress=false", "train.log_every=1", "train.threads=1", *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


def test_salt_recipe_runs_a_step_with_rope_and_records_its_masks(tmp_path, sim_root):
    teacher = ["teacher.family=random", "teacher.checkpoint=''", "teacher.arch=vit_tiny", "teacher.patch_size=16",
               "teacher.options={depth: 1, img_size: [224, 224], in_chans: 1}"]
    cfg = load_config(PRETRAIN / "salt_vitb16.yaml", _small(tmp_path / "salt", sim_root, "train.steps=1", *teacher))
    assert cfg.model.pos_embed == "rope" and not cfg.model.cls_token and cfg.mask.sampler == "reference"
    res = run_training(cfg)
    assert res.status == "completed" and np.isfinite(list(_losses(tmp_path / "salt").values())[0])
    masks = json.loads((tmp_path / "salt" / "masks.json").read_text())
    assert masks["batch"] == 4 and len(masks["pairs"]) == 2 and masks["tokens"] == 196
    short, long = (p["masked_share"]["mean"] for p in masks["pairs"])
    assert 0.7 < short < long < 1.0
    w = load_file(tmp_path / "salt" / "encoder.safetensors")
    assert "pos_embed" not in w and "cls_token" not in w


def test_vpixel_recipe_reconstructs_under_both_mask_pairs(tmp_path, sim_root, monkeypatch):
    from usjepa.models.mae_decoder import MAEDecoder

    calls = []
    real = MAEDecoder.forward

    def spy(self, visible, keep, grid, keep_valid=None, cls=None):
        calls.append(keep.shape[1])
        return real(self, visible, keep, grid, keep_valid, cls)

    monkeypatch.setattr(MAEDecoder, "forward", spy)
    cfg = load_config(PRETRAIN / "vpixel_vitb16.yaml",
                      _small(tmp_path / "vp", sim_root, "train.steps=1", "objective.mae.decoder_depth=1"))
    assert cfg.objective.name == "mae" and cfg.mask.preset == "salt" and cfg.optim.clip_grad == 0.02
    run_training(cfg)
    assert len(calls) == 2 and calls[0] > calls[1]  # the short-range pair leaves more visible than the long one


def test_rope_student_resumes_bit_exactly(tmp_path, sim_root):
    def cfg(out):
        return load_config(PRETRAIN / "salt_vit_tiny_sim.yaml",
                           [f"train.out_dir={out}", f"data.root={sim_root}", "data.num_images=48",
                            "data.sim_size=96", "data.batch_size=8", "train.steps=4", "train.progress=false",
                            "train.log_every=1", "train.ckpt_every=1000", "model.pos_embed=rope",
                            "model.cls_token=false", "predictor.zero_init_mask_tokens=true"])

    run_training(cfg(tmp_path / "full"))
    calls = {"k": 0}

    def stop_after_two() -> bool:
        calls["k"] += 1
        return calls["k"] == 2

    assert run_training(cfg(tmp_path / "split"), should_stop=stop_after_two).status == "preempted"
    run_training(cfg(tmp_path / "split"))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert [a[s] for s in (3, 4)] == [b[s] for s in (3, 4)]
    wa, wb = load_file(tmp_path / "full" / "encoder.safetensors"), load_file(tmp_path / "split" / "encoder.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_balanced_epoch_is_the_sum_of_capped_dataset_sizes(tmp_path, sim_root):
    groups = ["a"] * 120 + ["b"] * 30 + ["c"] * 7
    assert balanced_epoch_items(groups, 50) == 50 + 30 + 7
    assert balanced_epoch_items(groups, 0) == 157
    s = ResumableBatchSampler(157, 16, seed=0, weights=np.full(157, 1 / 157), epoch_items=87, total_steps=10)
    assert s.steps_per_epoch == 87 // 16 and len(s.order(0)) == 87
    # the trainer: 2 epochs of the capped sizes of the simulator's three probe datasets, warmup in epochs
    run = tmp_path / "bal"
    cfg = load_config(PRETRAIN / "salt_vit_tiny_sim.yaml",
                      [f"train.out_dir={run}", f"data.root={sim_root}", "data.num_images=48", "data.sim_size=96",
                       "data.batch_size=4", "train.epochs=2", "data.balance=dataset", "data.balance_cap=6",
                       "optim.warmup_epochs=1", "train.progress=false", "train.log_every=1", "data.augment=false"])
    from usjepa.data import build_dataset
    from usjepa.train.build import holdout_split

    ds = build_dataset(cfg.data, split="train", img_size=(64, 64), augment=False)
    train_idx, _ = holdout_split(len(ds), ds.patient_ids, 0.0, 0)
    sizes = np.unique(np.asarray(ds.datasets)[train_idx], return_counts=True)[1]
    per_epoch = int(np.minimum(sizes, 6).sum()) // 4
    assert run_training(cfg).step == 2 * per_epoch
    lr = [float(r["lr"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("lr")]
    assert lr[per_epoch - 1] < lr[per_epoch] == pytest.approx(cfg.optim.lr, rel=1e-6)


def test_mae_recipe_scales_its_learning_rate_by_the_batch():
    cfg = load_config(PRETRAIN / "mae_vitb16.yaml")
    assert peak_lr(cfg.optim, cfg.data.batch_size) == pytest.approx(1.5e-4 * 1024 / 256)
    lr, wd = optim_schedules(cfg.optim, 4096, 1000, 10)
    assert lr[0] == 0.0 and lr.max() == pytest.approx(1.5e-4 * 16) and lr[-1] == pytest.approx(0.0, abs=1e-12)
    assert (wd == 0.05).all()


def test_recipe_choices_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="data.preprocess=usjepa drops"):
        load_config(PRETRAIN / "usrc_jepa_vitb16.yaml", ["data.preprocess=usjepa"])
    with pytest.raises(ConfigError, match="head dims divisible by 4"):
        load_config(PRETRAIN / "salt_vitb16.yaml", ["predictor.num_heads=12", "predictor.embed_dim=360"])
    with pytest.raises(ConfigError, match="mask.sampler"):
        load_config(PRETRAIN / "salt_vitb16.yaml", ["mask.sampler=per_image"])
    usrc = load_config(PRETRAIN / "usrc_jepa_vitb16.yaml")
    assert usrc.mask.region.enabled and usrc.data.preprocess == "usrc" and usrc.data.balance == "dataset"
    assert OmegaConf.select(usrc, "optim.warmup_epochs") == 10


@pytest.mark.parametrize("cls_token", [False, True])
def test_usjepa_teacher_family_loads_a_rope_stage1_checkpoint(tmp_path, cls_token):
    from teachers import load
    from usjepa.models import build_vit

    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=2, img_size=(32, 48), patch_size=8, in_chans=1, cls_token=cls_token,
                    pos_embed="rope").eval()
    mc = dict(arch="vit_tiny", depth=2, img_size=[32, 48], patch_size=8, in_chans=1, cls_token=cls_token,
              pos_embed="rope")
    torch.save({"config": {"model": mc}, "model": vit.state_dict(), "step": 1}, tmp_path / "latest.pt")
    t = load("native", str(tmp_path / "latest.pt"), precision="fp32")
    for shape in ((2, 1, 32, 48), (1, 1, 48, 40)):  # the training grid and another one (RoPE is exact at any grid)
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(t(x), vit(x), atol=1e-5, rtol=1e-5)


def test_weight_decay_spares_only_biases_and_1d_parameters_as_upstream():
    from usjepa.models import Predictor, build_vit
    from usjepa.train.loop import _param_groups

    p = Predictor(in_dim=192, out_dim=64, embed_dim=32, depth=1, num_heads=2, num_mask_tokens=2)
    enc = build_vit("vit_tiny", depth=1, img_size=(32, 32), patch_size=8)
    decay, no_decay = _param_groups({"predictor": p, "model": enc})
    ids = {id(t) for t in decay["params"]}
    assert id(p.mask_tokens) in ids and id(enc.cls_token) in ids  # I-JEPA / MAE decay their tokens too
    assert all(t.ndim <= 1 for t in no_decay["params"])
