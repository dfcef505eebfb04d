"""Activation checkpointing per block: the same gradients as a plain step, far fewer bytes kept for backward."""

import sys
from pathlib import Path

import pytest
import torch

from usjepa.models import Predictor, apply_activation_checkpointing, build_vit, checkpointed_blocks
from usjepa.objectives import SALT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from live_memory import LiveTensorMemory  # noqa: E402


def _objective(seed=0, img=64, patch=8):
    torch.manual_seed(seed)
    student = build_vit("vit_small", depth=3, img_size=(img, img), patch_size=patch, in_chans=1, cls_token=False,
                        pos_embed="rope", drop_path=0.2, attn_backend="sdpa")
    predictor = Predictor(384, 384, embed_dim=192, depth=2, num_heads=4, per_block=False, pos_embed="rope",
                          num_mask_tokens=2, attn_backend="sdpa")
    n = (img // patch) ** 2
    targets = torch.randn(4, n, 384, generator=torch.Generator().manual_seed(seed + 1))

    class Cache:
        def get(self, index):
            return targets[: len(index)]

    return SALT(student, predictor, None, cache=Cache()).train()


def _batch(sampler_kind, img=64, patch=8):
    from usjepa.masks import ComplementMasker, PerSampleSampler, VJepaMultiBlock

    grid = (img // patch, img // patch)
    sampler = VJepaMultiBlock(grid) if sampler_kind == "reference" else PerSampleSampler(ComplementMasker(grid))
    return {"image": torch.rand(4, 1, img, img, generator=torch.Generator().manual_seed(5)),
            "index": torch.arange(4), "masks": sampler(list(range(10, 14)))}


def _step(objective, batch, seed=7):
    torch.manual_seed(seed)  # drop-path draws
    with LiveTensorMemory() as mem:
        loss, _ = objective(batch)
        kept = mem.current_bytes  # what the forward leaves for backward
        loss.backward()
    grads = {n: p.grad.clone() for n, p in objective.named_parameters()}
    return loss.detach(), grads, kept, mem.peak_bytes


@pytest.mark.parametrize("sampler_kind", ["reference", "per_sample"])
def test_checkpointing_gives_identical_gradients_and_keeps_far_less(sampler_kind):
    batch = _batch(sampler_kind)
    plain = _objective()
    ckpt = _objective()
    assert apply_activation_checkpointing(ckpt) == 3 + 2 == checkpointed_blocks(ckpt)
    assert checkpointed_blocks(plain) == 0
    loss_a, grads_a, kept_a, peak_a = _step(plain, batch)
    loss_b, grads_b, kept_b, peak_b = _step(ckpt, batch)
    assert torch.equal(loss_a, loss_b)
    for name, g in grads_a.items():  # drop-path is on: the recomputation replays the same random draws
        torch.testing.assert_close(grads_b[name], g, atol=0, rtol=0, msg=name)
    assert kept_b < 0.35 * kept_a, (kept_a, kept_b)  # each block keeps its input only
    assert peak_b < peak_a
    # the state dict keeps timm's key names (no wrapper modules)
    assert list(ckpt.state_dict()) == list(plain.state_dict())


def test_checkpointing_is_inert_without_gradients_and_can_be_turned_off():
    obj = _objective()
    batch = _batch("reference")
    torch.manual_seed(0)
    with torch.no_grad():
        ref, _ = obj(batch)
    apply_activation_checkpointing(obj)
    torch.manual_seed(0)
    with torch.no_grad():
        out, _ = obj(batch)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert apply_activation_checkpointing(obj, enable=False) == 5 and checkpointed_blocks(obj) == 0


def test_config_key_is_a_validated_bool():
    from usjepa.config import ConfigError, load_config

    root = Path(__file__).resolve().parents[1]
    overrides = ["teacher.family=random"]
    cfg = load_config(root / "configs/pretrain/tiny_sim.yaml", [*overrides, "train.activation_checkpointing=true"])
    assert cfg.train.activation_checkpointing is True
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_config(root / "configs/pretrain/tiny_sim.yaml", [*overrides, "train.activation_checkpointing=sometimes"])


def test_the_training_loop_applies_it_with_identical_losses_gradients_and_weights(tmp_path, sim_root):
    """`train.activation_checkpointing=true` through `run_training`: every block of the student and the predictor
    recomputes (env.json says how many), and a short SALT run (drop-path on) logs the same losses and gradient
    norms and ends with the same weights as a plain run, bit for bit."""
    import csv
    import json

    from usjepa.config import load_config
    from usjepa.train import run_training
    from usjepa.train.checkpoint import load_training_checkpoint

    root = Path(__file__).resolve().parents[1]

    def run(name: str, *extra: str) -> tuple[list[tuple[str, str]], dict, dict]:
        out = tmp_path / name
        cfg = load_config(root / "configs/pretrain/salt_vit_tiny_sim.yaml", [
            f"train.out_dir={out}", f"data.root={sim_root}", "data.num_images=96", "data.batch_size=8",
            "train.steps=3", "train.progress=false", "train.log_every=1", "train.threads=1", "model.depth=2",
            "model.drop_path=0.2", *extra])
        run_training(cfg)
        with open(out / "metrics.csv", newline="") as f:
            rows = [(r["loss"], r["grad_norm"]) for r in csv.DictReader(f)]
        return rows, load_training_checkpoint(out / "latest.pt"), json.loads((out / "env.json").read_text())

    rows_a, ckpt_a, env_a = run("plain")
    rows_b, ckpt_b, env_b = run("ckpt", "train.activation_checkpointing=true")
    assert env_a["large_run"]["activation_checkpointing"] is False
    assert env_b["large_run"]["activation_checkpointing"] is True
    assert env_b["large_run"]["checkpointed_blocks"] == 2 + 2  # student and predictor blocks; not the teacher's
    assert len(rows_a) == 3 and rows_b == rows_a
    for part in ("model", "predictor"):
        for k, v in ckpt_a[part].items():
            assert torch.equal(ckpt_b[part][k], v), (part, k)
