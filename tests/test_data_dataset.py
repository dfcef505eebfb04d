"""build_dataset on simulated data: caching, splits, the item contract, seeded augmentation, region masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from usjepa.data import DataConfig, build_dataset, collate_skip_bad, sampling_weights, simulated_root

SMALL = {"num_images": 24, "sim_size": 96, "sim_frames_per_patient": 2}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("USJEPA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_simulated_source_is_generated_once_into_the_cache(cache):
    cfg = DataConfig(**SMALL)
    ds = build_dataset(cfg, "train", (64, 64), augment=True)
    root = simulated_root(cfg)
    assert root.parent == cache / "sim" and (root / "manifest.csv").exists()
    stamp = (root / "manifest.csv").stat().st_mtime_ns
    parts = {s: build_dataset(cfg, s, (64, 64), augment=False) for s in ("val", "test")}
    assert (root / "manifest.csv").stat().st_mtime_ns == stamp
    assert len(build_dataset(cfg, None, (64, 64), False)) == 24 == len(ds) + sum(len(p) for p in parts.values())
    seen = [set(ds.patient_ids)] + [set(p.patient_ids) for p in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert ds.num_classes == 4 and ds.class_names[1] == "cyst"
    assert all(p.class_names == ds.class_names for p in parts.values())


def test_item_contract_and_seeded_augmentation(cache):
    cfg = DataConfig(channels=3, **SMALL)
    ds = build_dataset(cfg, "train", (48, 80), augment=True)
    it = ds[0]
    assert it["image"].shape == (3, 48, 80) and it["image"].dtype == torch.float32
    assert 0 <= float(it["image"].min()) and float(it["image"].max()) <= 1
    assert it["region"].shape == (48, 80) and it["region"].dtype == torch.bool
    assert it["label"].dtype == torch.int64 and it["label"].shape == () and int(it["label"]) == ds.labels[0]
    assert it["target"].dtype == torch.float32 and float(it["target"]) == pytest.approx(ds.targets[0])
    assert isinstance(it["path"], str) and it["patient_id"] == ds.patient_ids[0] and it["index"] == 0
    assert torch.equal(ds[0]["image"], it["image"])  # int keys: deterministic, no augmentation
    a, b, c = ds[(0, 11)], ds[(0, 11)], ds[(0, 12)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["region"], b["region"])
    assert not torch.equal(a["image"], c["image"])
    plain = build_dataset(cfg, "train", (48, 80), augment=False)
    assert torch.equal(plain[(0, 11)]["image"], it["image"])  # augment=False ignores item seeds


def test_region_comes_from_the_simulator_masks(cache):
    cfg = DataConfig(resize="squash", **SMALL)
    ds = build_dataset(cfg, None, (96, 96), augment=False)
    want = np.asarray(Image.open(ds.table["mask_path"][0])) > 0
    got = ds[0]["region"].numpy()
    assert np.array_equal(got, want)
    plain = int(np.argmin(ds.table["dressed"].to_numpy()))  # a frame without scanner overlays
    assert ds.table["dressed"][plain] == 0
    it = ds[plain]
    assert it["image"][0][~it["region"]].max() == 0.0 and it["image"][0][it["region"]].mean() > 0.2


@pytest.mark.parametrize("preprocess", ["fan", "usrc"])
def test_fan_preprocessing_crops_to_the_fan_and_clears_overlays(cache, preprocess):
    cfg = DataConfig(preprocess=preprocess, region="estimate", sim_dress=1.0, **SMALL)
    ds = build_dataset(cfg, None, (64, 64), augment=True)
    for i in range(4):
        it = ds[(i, i)]
        reg, img = it["region"].numpy(), it["image"][0].numpy()
        assert img[~reg].max() == 0.0
        assert reg.mean() > 0.5  # cropped to the fan's box: the fan fills most of the view
    if preprocess == "usrc":
        it = ds[0]
        vals = it["image"][0][it["region"]]
        assert float(vals.max()) > 0.9 and float((vals > 0.95).float().mean()) < 0.1  # (resizing smooths the top)


def test_plain_usjepa_preprocessing_keeps_the_whole_frame(cache):
    """US-JEPA (not USrc): nothing outside the fan is cleared or cropped; the fan only sets the 2-98 percentiles."""
    from usjepa.data.preprocess import percentile_rescale, remove_overlays, to_gray
    from usjepa.data.sources import decode

    cfg = DataConfig(preprocess="usjepa", region="given", sim_dress=1.0, resize="squash", **SMALL)
    ds = build_dataset(cfg, None, (96, 96), augment=False)
    i = int(np.argmax(ds.table["dressed"].to_numpy()))
    it = ds[i]
    assert bool(it["region"].all())  # no region travels on: crops and flips use the whole frame
    fan = np.asarray(Image.open(ds.table["mask_path"][i])) > 0
    raw = decode(ds.paths[i], ds._kinds[i], int(ds._frames[i]), max_side=192)
    assert to_gray(raw)[~fan].max() > 0.3  # burned-in text / ruler outside the fan ...
    want = percentile_rescale(remove_overlays(raw, None), fan, keep_outside=True)
    assert want[~fan].max() > 0.3  # ... survives the preprocessing
    got = it["image"][0].numpy()
    ref = np.asarray(Image.fromarray(want).resize((96, 96), Image.BILINEAR))
    assert np.abs(got - np.clip(ref, 0, 1)).mean() < 0.02
    inside = want[fan]
    assert np.quantile(inside, 0.02) < 0.02 and np.quantile(inside, 0.98) > 0.98


def test_generates_into_an_empty_root_and_reads_an_existing_one(tmp_path, cache):
    root = tmp_path / "mysim"
    cfg = DataConfig(root=str(root), task="organ", **SMALL)
    ds = build_dataset(cfg, None, (32, 32), augment=False)
    assert (root / "manifest.csv").exists() and not (cache / "sim").exists()
    assert ds.class_names == ["liver", "kidney", "muscle", "breast"]
    again = build_dataset(DataConfig(root=str(root), task="lesion", num_images=999), None, (32, 32), False)
    assert len(again) == 24 and again.class_names[0] == "normal"  # read, not regenerated


def test_collate_and_balancing_on_simulated_data(cache):
    ds = build_dataset(DataConfig(**SMALL), None, (32, 32), augment=True)
    batch = collate_skip_bad([ds[(i, i)] for i in range(4)] + [None])
    assert batch["image"].shape == (4, 1, 32, 32) and batch["region"].shape == (4, 32, 32)
    assert batch["label"].shape == (4,) and batch["num_bad"] == 1 and len(batch["path"]) == 4
    p = sampling_weights(ds, by="organ", cap=2)
    organs = np.unique(ds.organs)
    assert np.allclose([p[ds.organs == o].sum() for o in organs], 1 / len(organs))


def test_trivial_policy_and_squash_through_the_dataset(cache):
    cfg = DataConfig(augment_policy="trivial", vflip=1.0, **SMALL)
    ds = build_dataset(cfg, None, (40, 40), augment=True)
    views = [ds[(0, s)]["image"] for s in range(6)]
    assert all(v.shape == (1, 40, 40) for v in views)
    assert len({v.numpy().tobytes() for v in views}) == 6


def test_too_many_bad_items_stop_a_worker_loader_with_data_error(tmp_path):
    from usjepa.data import DataError

    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(tmp_path / "a.png")
    for i in range(3):
        (tmp_path / f"b{i}.png").write_bytes(b"junk")
    ds = build_dataset(DataConfig(source="folder", root=str(tmp_path)), None, (16, 16), augment=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip_bad)
    with pytest.raises(DataError, match="bad_item_threshold"):
        next(iter(dl))
