"""`usjepa data prepare` and `data.source=prepared`: shards of a mixed export folder (single PNGs, a dual-pane
export, a corrupt file, a DICOM cine) hold the per-item path's preprocessed frames; a killed run resumes to the same
bytes, a second run writes nothing, other settings are refused by key; prepared items shard across ranks and
workers without duplicates; training from shards resumes bit-exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.scanner_exports import dressed_single, make_export, write_dicom
from usjepa.config import ConfigError, git_info, load_config
from usjepa.data import DataError, build_dataset, collate_skip_bad
from usjepa.data import shards as fmt
from usjepa.data.prepare import prepare
from usjepa.data.prepared import PreparedDataset
from usjepa.data.transforms import crop_resize
from usjepa.train.sampler import ResumableBatchSampler, SeededItems

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/pretrain/salt_vit_tiny_sim.yaml")
IMG = (64, 64)
U8 = 0.5 / 255 + 1e-6  # uint8 rounding


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("USJEPA_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Three dressed single frames, a dual-pane export, a corrupt PNG and a 3-frame DICOM cine, with a manifest
    naming two datasets, patients and labels."""
    root = tmp_path_factory.mktemp("exports")
    dual = make_export("dual", (768, 1024), [(70, 70, 430, 410), (70, 530, 430, 410)], "linear", 0, band=True,
                       ramp=1, calipers=(0,))
    Image.fromarray(dual.image).save(root / "dual.png")
    for i in range(3):
        Image.fromarray(dressed_single(i, 256).image).save(root / f"single{i}.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 20)
    write_dicom(root / "cine.dcm", np.stack([dressed_single(10 + i, 256).image for i in range(3)]), patient="P9")
    rows = [("dual.png", "A", "P1", 0), ("single0.png", "A", "P2", 1), ("single1.png", "B", "P3", 0),
            ("single2.png", "B", "P3", 1), ("corrupt.png", "B", "P4", 1), ("cine.dcm", "A", "P9", 0)]
    pd.DataFrame(rows, columns=["path", "dataset", "patient_id", "label"]).to_csv(root / "manifest.csv", index=False)
    return root


def _cfg_overrides(src: Path) -> list[str]:
    return ["data.source=manifest", f"data.manifest={src / 'manifest.csv'}", "data.task=label", "data.preprocess=fan",
            "data.bad_item_threshold=0.5", "data.max_side=1024"]


def _cfg(src: Path, *extra: str):
    return load_config(CONFIG, [*_cfg_overrides(src), *extra])


def _prepared_cfg(out: Path, *extra: str):
    return load_config(CONFIG, ["data.source=prepared", f"data.root={out}", "data.task=label",
                                "data.preprocess=fan", "data.max_side=1024", *extra])


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def prepared(src, cache, tmp_path_factory):
    """The folder prepared once by a pool of two worker processes, 3 source rows per shard."""
    out = tmp_path_factory.mktemp("shards") / "out"
    seen = []
    res = prepare(_cfg(src), out, workers=2, shard_rows=3, on_shard=seen.append)
    assert [s["shard"] for s in seen] == [0, 1, 2]  # progress as shards arrive from the pool
    return out, res


def test_prepare_writes_few_shards_an_index_and_the_bad_items(prepared, src):
    out, res = prepared
    assert res.status == "prepared" and res.shards == 3 and res.items == 8
    names = {p.name for p in out.iterdir()}
    assert names == {f"{k}-{i:05d}.{e}" for i in range(3) for k, e in (("frames", "npy"), ("regions", "npy"),
                                                                       ("items", "parquet"), ("shard", "json"))} \
        | {fmt.META, fmt.INDEX, fmt.BAD, ".lock"}  # no temp file left behind
    index = pd.read_parquet(out / fmt.INDEX)
    files = index["path"].map(lambda p: Path(p).name)
    assert sorted(index.loc[files == "dual.png", "pane"]) == [0, 1]  # both panes, each its own item
    assert sorted(index.loc[files == "cine.dcm", "frame"]) == [0, 1, 2]
    assert "corrupt.png" not in set(files)
    assert {"dataset", "patient_id", "label", "path", "frame", "pane", *fmt.STORAGE_COLUMNS} <= set(index.columns)
    assert index.loc[files == "cine.dcm", "patient_id"].unique().tolist() == ["P9"]
    assert set(index["dataset"]) == {"A", "B"}
    bad = pd.read_csv(out / fmt.BAD)
    assert bad["path"].map(lambda p: Path(p).name).tolist() == ["corrupt.png"]
    assert bad["reason"].iloc[0].startswith("corrupt or unreadable")
    meta = fmt.read_meta(out)
    assert meta["settings"] == fmt.settings_of(_cfg(src).data, IMG)
    assert meta["data"]["manifest"] == str(src / "manifest.csv") and meta["items"] == 8
    assert meta["git"]["commit"] == git_info()["commit"] and meta["versions"]["numpy"] == np.__version__


def test_prepared_frames_equal_the_per_item_preprocessed_frames(prepared, src):
    out, _ = prepared
    per_item = build_dataset(_cfg(src).data, None, IMG, augment=False)
    shards = build_dataset(_prepared_cfg(out).data, None, IMG, augment=False)
    assert isinstance(shards, PreparedDataset)
    where = {(p, int(f), int(k)): j for j, (p, f, k) in
             enumerate(zip(per_item.paths, per_item.table["frame"], per_item.table["pane"], strict=True))}
    assert len(shards) == len(per_item) - 1  # the corrupt file
    for i in range(len(shards)):
        row = shards.table.iloc[i]
        j = where[(row["path"], int(row["frame"]), int(row["pane"]))]
        a, ra = per_item.preprocessed(j)
        b, rb = shards.preprocessed(i)
        assert a.shape == b.shape and np.abs(a - b).max() <= U8, row["path"]
        assert np.array_equal(ra, rb)
        x, y = per_item[j], shards[i]  # un-augmented model inputs: one uint8 resize vs one float resize
        assert torch.equal(x["region"], y["region"]) and (x["image"] - y["image"]).abs().max() <= 2 / 255
        assert (x["label"], x["patient_id"]) == (y["label"], y["patient_id"])
    parts = {s: set(build_dataset(_prepared_cfg(out).data, s, IMG, augment=False).patient_ids)
             for s in ("train", "val", "test")}  # split by patient on the metadata table, as for other sources
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    assert set.union(*parts.values()) == set(shards.patient_ids)


def test_max_side_bounds_stored_frames_and_usjepa_keeps_the_whole_frame(src, cache, tmp_path):
    sub = tmp_path / "manifest.csv"
    pd.read_csv(src / "manifest.csv").query("path != 'dual.png' and path != 'corrupt.png'").assign(
        path=lambda t: [str(src / p) for p in t["path"]]).to_csv(sub, index=False)
    cfg = _cfg(src, f"data.manifest={sub}", "data.preprocess=usjepa", "data.max_side=96")
    prepare(cfg, tmp_path / "out", workers=1)
    per_item = build_dataset(cfg.data, None, IMG, augment=False)
    shards = build_dataset(_prepared_cfg(tmp_path / "out", "data.preprocess=usjepa", "data.max_side=96").data,
                           None, IMG, augment=True)
    assert len(shards) == len(per_item) == 6
    for i in range(len(shards)):
        img, region, used = shards.stored(i)
        assert max(img.shape) == 96 and region is not None and not used  # the fan is stored, training ignores it
        a, _ = per_item.preprocessed(i)
        ref, _ = crop_resize(a, np.ones(a.shape, bool), (0, 0, a.shape[1], a.shape[0]), img.shape)
        assert np.abs(ref - img / np.float32(255)).max() <= U8
        item = shards[(i, 7)]
        assert bool(item["region"].all())  # plain US-JEPA: crops and jitter act on the whole frame
        assert item["image"].dtype == torch.float32 and item["image"].shape == (1, *IMG)


def test_kill_then_resume_gives_the_bytes_of_one_run(prepared, src, tmp_path):
    ref, _ = prepared
    out = tmp_path / "out"
    script = ("import os, signal, sys\n"
              "from usjepa.config import load_config\nfrom usjepa.data.prepare import prepare\n"
              "cfg = load_config(sys.argv[1], sys.argv[3:])\n"
              "prepare(cfg, sys.argv[2], workers=1, shard_rows=3, "
              "on_shard=lambda s: os.kill(os.getpid(), signal.SIGKILL))\n")
    run = subprocess.run([sys.executable, "-c", script, CONFIG, str(out), *_cfg_overrides(src)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    assert (out / "shard-00000.json").exists() and not (out / fmt.INDEX).exists()
    (out / ".frames-00001.npy.tmp99999").write_bytes(b"half a shard")  # as a kill during a write leaves it
    res = prepare(_cfg(src), out, workers=1, shard_rows=3)
    assert res.status == "prepared" and res.reused == 1
    keep = [n for n in _snapshot(ref) if n not in (fmt.META,)]
    a, b = _snapshot(ref), _snapshot(out)
    assert sorted(a) == sorted(b)
    assert all(a[n][1] == b[n][1] for n in keep)  # shards, per-shard tables, bad items and the index
    assert fmt.read_meta(out)["settings"] == fmt.read_meta(ref)["settings"]


def test_a_second_run_writes_nothing(prepared, src, capsys):
    from usjepa.cli import main

    out, _ = prepared
    before = _snapshot(out)
    assert main(["data", "prepare", CONFIG, *_cfg_overrides(src), "--out", str(out), "--workers", "1",
                 "--shard-rows", "3"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_other_settings_are_refused_with_the_keys_named(prepared, src, tmp_path):
    out, _ = prepared
    with pytest.raises(ConfigError, match=r"data\.preprocess: shards 'fan', config 'usjepa'.*data\.max_side"):
        _prepared_cfg(out, "data.preprocess=usjepa", "data.max_side=512")
    _prepared_cfg(out, "data.augment_policy=usjepa", "data.hflip=0.0")  # augmentation may differ
    before = _snapshot(out)
    with pytest.raises(DataError, match=r"data\.panes: shards 'split', config 'whole'"):
        prepare(_cfg(src, "data.panes=whole"), out, workers=1, shard_rows=3)
    assert _snapshot(out) == before  # nothing overwritten
    import fcntl

    with open(out / ".lock") as held:  # another run writing this folder
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DataError, match="another `usjepa data prepare` is writing"):
            prepare(_cfg(src), out, workers=1, shard_rows=3)
    with pytest.raises(ConfigError, match="holds no prepared shards"):
        _prepared_cfg(tmp_path)
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        prepare(_cfg(src), tmp_path, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_shards_of_other_preprocessing_rules_are_refused(prepared, monkeypatch):
    """Shards record the VIEW_VERSION of their pixels; shards of other rules are refused, never read."""
    import json

    out, _ = prepared
    meta = json.loads((out / fmt.META).read_text())
    assert meta["view_version"] == fmt.VIEW_VERSION == fmt.FIRST_VIEW_VERSION
    assert fmt.read_meta(out)["view_version"] == fmt.VIEW_VERSION
    monkeypatch.setattr(fmt, "VIEW_VERSION", fmt.VIEW_VERSION + 1)
    with pytest.raises(DataError, match=r"preprocessing rules of version 2; this usjepa makes version 3"):
        fmt.read_meta(out)


def test_ranks_and_workers_see_disjoint_items(prepared):
    out, _ = prepared
    ds = build_dataset(_prepared_cfg(out, "data.augment_policy=usjepa", "data.vflip=0.5").data, None, IMG,
                       augment=True)
    n, batch, steps = len(ds), 4, 4
    one = list(ResumableBatchSampler(n, batch, seed=3, total_steps=steps))
    ranks = [list(ResumableBatchSampler(n, batch, seed=3, rank=r, world=2, total_steps=steps)) for r in (0, 1)]
    for s in range(steps):
        a, b = ranks[0][s], ranks[1][s]
        assert not {i for i, _ in a} & {i for i, _ in b} and a + b == one[s]
    epoch = ResumableBatchSampler(n, batch, seed=3, total_steps=n // batch)
    loader = torch.utils.data.DataLoader(SeededItems(ds), batch_sampler=epoch, num_workers=2,
                                         collate_fn=collate_skip_bad)
    batches = list(loader)
    seen = [int(i) for b in batches for i in b["index"]]
    assert len(seen) == len(set(seen)) == (n // batch) * batch  # each item once per epoch, over both workers
    assert ds.reader.open_maps() == 0  # the workers opened their own memory maps
    keys = [k for b in epoch for k in b]
    for b, k0 in zip(batches, range(0, len(keys), batch), strict=True):
        for j, (i, seed) in enumerate(keys[k0:k0 + batch]):
            assert torch.equal(b["image"][j], ds[(i, seed)]["image"])  # seeded: same pixels in any process


def test_training_from_shards_resumes_bit_exactly(tmp_path, cache):
    from safetensors.torch import load_file

    from usjepa.train import run_training

    sim = ["data.source=simulate", f"data.root={tmp_path / 'sim'}", "data.num_images=48", "data.sim_size=96",
           "data.sim_workers=1"]
    prepare(load_config(CONFIG, sim), tmp_path / "shards", workers=1)

    def cfg(run: str):  # three simulated probe kinds = three datasets, capped at 4 items: 12 items per epoch
        return load_config(CONFIG, ["data.source=prepared", f"data.root={tmp_path / 'shards'}", "data.batch_size=8",
                                    "data.balance=dataset", "data.balance_cap=4", f"train.out_dir={tmp_path / run}",
                                    "train.steps=3", "train.progress=false", "train.log_every=1"])

    ds = build_dataset(cfg("x").data, "train", IMG, augment=True)
    assert isinstance(ds, PreparedDataset) and len(set(ds.datasets)) == 3
    full = run_training(cfg("full"))
    calls = {"k": 0}

    def stop_after_one() -> bool:
        calls["k"] += 1
        return calls["k"] == 1

    assert run_training(cfg("split"), should_stop=stop_after_one).status == "preempted"
    assert run_training(cfg("split")).status == full.status == "completed"
    loss = {r: pd.read_csv(tmp_path / r / "metrics.csv").set_index("step")["loss"] for r in ("full", "split")}
    assert loss["full"].loc[2:3].tolist() == loss["split"].loc[2:3].tolist()
    a, b = (load_file(tmp_path / r / "encoder.safetensors") for r in ("full", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
