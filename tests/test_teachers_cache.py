"""Target cache: stored targets equal live ones, and a cache made for another setup is refused by name."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import teachers
from teachers import cache as tcache
from teachers.cache import TargetCache, build_cache, cache_identity
from teachers.spec import TeacherConfig
from usjepa.data.spec import DataConfig
from usjepa.models.checkpoint_io import CheckpointError

BAD = 3


class FakeDataset(torch.utils.data.Dataset):
    """Deterministic fixed views; item BAD is unreadable (None), like a corrupt file."""

    def __init__(self, n: int = 10, size: int = 32):
        self.n, self.size = n, size
        self.paths = [f"img_{i:03d}.png" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == BAD:
            return None
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(1, self.size, self.size, generator=g), "index": i, "path": self.paths[i]}


def teacher_cfg(**kw) -> TeacherConfig:
    cfg = dict(family="random", arch="vit_tiny", patch_size=8, options={"depth": 2})
    cfg.update(kw)
    return OmegaConf.structured(TeacherConfig(**cfg))


DATA = OmegaConf.structured(DataConfig)


def live_targets(tcfg, ds, idx, grid) -> torch.Tensor:
    t = teachers.load_spec(tcfg)
    images = torch.stack([ds[i]["image"] for i in idx])
    h = t.tokens_on_grid(images, grid)
    return F.layer_norm(h, (h.shape[-1],))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    ds = FakeDataset()
    build_cache(teacher_cfg(), DATA, (32, 32), out, "layernorm", batch_size=3, device="cpu", grid=(2, 2),
                dtype="float32", shard_size=4, dataset=ds, progress=False)
    return out, ds


def test_cached_targets_equal_live_ones(built):
    out, ds = built
    expected = cache_identity(teacher_cfg(), ds, DATA, (32, 32), (2, 2), "layernorm")
    c = TargetCache(out, expected=expected)
    assert (c.embed_dim, c.num_tokens, len(c)) == (192, 4, 9)
    idx = torch.tensor([9, 0, 5, 4])  # across shards, out of order
    got = c.get(idx)
    assert got.dtype == torch.float32 and got.shape == (4, 4, 192)
    torch.testing.assert_close(got, live_targets(teacher_cfg(), ds, idx.tolist(), (2, 2)), atol=1e-6, rtol=1e-6)
    assert sorted(p.name for p in out.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    with pytest.raises(KeyError, match=r"items \[3\] have no cached target"):
        c.get([1, BAD])


def test_float16_shards_are_close(tmp_path):
    ds = FakeDataset(n=5)
    build_cache(teacher_cfg(), DATA, (32, 32), tmp_path, "layernorm", batch_size=4, device="cpu", dataset=ds,
                progress=False)
    c = TargetCache(tmp_path)
    assert c.shards[0].dtype == "float16" and c.grid == (4, 4)
    live = live_targets(teacher_cfg(), ds, [0, 4], (4, 4))
    torch.testing.assert_close(c.get([0, 4]), live, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("change,field", [
    (dict(teacher=teacher_cfg(layer=0)), "teacher.layer"),
    (dict(teacher=teacher_cfg(options={"depth": 2, "seed": 1})), "teacher.options.seed"),
    (dict(teacher=teacher_cfg(norm="imagenet")), "teacher.norm"),
    (dict(img=(48, 48)), "img_size"),
    (dict(grid=(4, 4)), "grid"),
    (dict(target_norm="none"), "target_norm"),
    (dict(ds=FakeDataset(n=11)), "dataset.num_items"),
])
def test_refuses_a_cache_made_for_another_setup(built, change, field):
    out, ds = built
    expected = cache_identity(change.get("teacher", teacher_cfg()), change.get("ds", ds), DATA,
                              change.get("img", (32, 32)), change.get("grid", (2, 2)),
                              change.get("target_norm", "layernorm"))
    with pytest.raises(CheckpointError, match=rf"another setup: .*{field.replace('.', '[.]')}: cache"):
        TargetCache(out, expected=expected)


def test_a_cache_of_older_preprocessing_rules_is_refused(built, monkeypatch):
    """Pixels of the same data settings changed meaning (VIEW_VERSION): a cache of the old pixels is never reused."""
    import json

    out, ds = built
    expected = cache_identity(teacher_cfg(), ds, DATA, (32, 32), (2, 2), "layernorm")
    TargetCache(out, expected=expected)  # today's rules: reused
    meta = json.loads((out / "cache.json").read_text())
    assert meta["identity"]["dataset"]["view_version"] == tcache.VIEW_VERSION
    monkeypatch.setattr(tcache, "VIEW_VERSION", tcache.VIEW_VERSION + 1)
    newer = cache_identity(teacher_cfg(), ds, DATA, (32, 32), (2, 2), "layernorm")
    with pytest.raises(CheckpointError, match=r"dataset[.]view_version: cache 2, this run 3"):
        TargetCache(out, expected=newer)


def test_checkpoint_hash_is_part_of_the_identity(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3, num_classes=0,
                          global_pool="", fc_norm=False)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(m.state_dict(), a)
    torch.save({k: v + 1 for k, v in m.state_dict().items()}, b)
    ia = tcache.teacher_identity(teacher_cfg(family="mae", checkpoint=str(a), arch="", patch_size=0, options={}))
    ib = tcache.teacher_identity(teacher_cfg(family="mae", checkpoint=str(b), arch="", patch_size=0, options={}))
    assert ia["checkpoint_sha256"] != ib["checkpoint_sha256"] and ia["norm"] == "imagenet"
    assert tcache.identity_diff({"teacher": ia}, {"teacher": ib}) == [
        f"teacher.checkpoint_sha256: cache {ia['checkpoint_sha256']!r}, this run {ib['checkpoint_sha256']!r}"]
    # a family whose tokens changed for the same file (DINOv2 register interpolation) refuses older caches
    dino = tcache.teacher_identity(teacher_cfg(family="dinov2", checkpoint=str(a), arch="", patch_size=0, options={}))
    assert "family_revision" not in ia and dino["family_revision"] == 2
    assert "teacher.family_revision: cache '<absent>', this run 2" in tcache.identity_diff(
        {"teacher": {k: v for k, v in dino.items() if k != "family_revision"}}, {"teacher": dino})


def test_rebuild_reuses_same_and_never_overwrites_other(built):
    out, ds = built
    before = (out / "cache.json").read_text()
    build_cache(teacher_cfg(), DATA, (32, 32), out, "layernorm", batch_size=3, device="cpu", grid=(2, 2),
                dtype="float32", shard_size=4, dataset=ds, progress=False)
    assert (out / "cache.json").read_text() == before
    with pytest.raises(CheckpointError, match="already holds a target cache made with other settings.*teacher.layer"):
        build_cache(teacher_cfg(layer=0), DATA, (32, 32), out, "layernorm", device="cpu", grid=(2, 2),
                    dataset=ds, progress=False)


def test_cli_builds_from_a_pretrain_config(tmp_path, monkeypatch):
    import usjepa.data

    ds = FakeDataset(n=4)
    monkeypatch.setattr(usjepa.data, "build_dataset", lambda *a, **k: ds, raising=False)
    cfg = tmp_path / "salt.yaml"
    cfg.write_text("model: {img_size: [32, 32], patch_size: 16}\n"
                   "teacher: {family: random, arch: vit_tiny, patch_size: 8, options: {depth: 1}}\n"
                   f"train: {{out_dir: {tmp_path / 'run'}}}\n")
    parser = argparse.ArgumentParser()
    tcache.add_arguments(parser)
    args = parser.parse_args([str(cfg), "data.batch_size=2", "--device", "cpu"])
    assert tcache.run_from_args(args) == 0
    out = tmp_path / "run" / "teacher_cache"
    from usjepa.config import load_config

    run_cfg = load_config(str(cfg), ["data.batch_size=2", f"teacher.cache={out}", "data.augment=false"])
    c = TargetCache(out, expected=tcache.expected_cache_identity(run_cfg))
    assert c.grid == (2, 2) and len(c) == 3  # item BAD is unreadable
    bad = load_config(str(cfg), ["teacher.layer=0"])
    with pytest.raises(CheckpointError, match="teacher.layer"):
        TargetCache(out, expected=tcache.expected_cache_identity(bad))
