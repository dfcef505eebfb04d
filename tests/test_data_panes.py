"""Scanner exports through the dataset: multi-pane frames become pane items with the frame's labels, each with the
region the layout reports; colour Doppler frames follow data.colour_frames; layout scans are cached; keys validated."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.scanner_exports import by_name, write_dicom
from usjepa.config import ConfigError, load_config
from usjepa.data import DataConfig, DataError, build_dataset
from usjepa.data import panes as panes_mod
from usjepa.data.layout import detect_layout
from usjepa.data.preprocess import colour_marks
from usjepa.data.sources import decode

FILES = {  # file -> (export, items with data.panes=split and data.colour_frames=skip)
    "dual.png": ("dual_linear_1024x768", 2),
    "quad.png": ("quad_phased_800x600", 4),
    "dual_doppler.png": ("dual_bmode_colourflow_1280x720", 1),  # the B-mode pane stays, the colour pane is skipped
    "power.png": ("power_linear_1024x768", 0),
    "single.png": ("single_calipers_800x600", 1),
}


@pytest.fixture(scope="module")
def exports_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    ex = by_name(0)
    rows = []
    for i, (fname, (name, _)) in enumerate(FILES.items()):
        Image.fromarray(ex[name].image).save(root / fname)
        rows.append({"path": fname, "label": i % 2, "patient_id": f"P{i}", "split": "train"})
    cine = np.stack([ex["dual_curvilinear_1024x768"].image] * 3)  # a dual-pane cine: one scan for its frames
    write_dicom(root / "cine.dcm", cine, patient="P9")
    rows.append({"path": "cine.dcm", "label": 1, "patient_id": "P9", "split": "train"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("USJEPA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _build(root, **kw):
    cfg = DataConfig(source="manifest", manifest=str(root / "manifest.csv"), preprocess="fan", **kw)
    return build_dataset(cfg, None, (64, 64), augment=False)


def test_panes_become_items_with_the_frame_labels_patient_and_split(exports_dir, cache):
    ds = _build(exports_dir, bad_item_threshold=0.01)  # skipped Doppler does not count as unreadable
    t = ds.table
    names = t["path"].map(lambda p: p.split("/")[-1])
    for fname, (_, n) in FILES.items():
        assert (names == fname).sum() == n, fname
    cine = t[names == "cine.dcm"]
    assert sorted(zip(cine["frame"], cine["pane"], strict=True)) == [(f, p) for f in range(3) for p in range(2)]
    assert list(t.loc[names == "quad.png", "pane"]) == [0, 1, 2, 3]
    assert list(t.loc[names == "single.png", "pane"]) == [-1]  # one pane: the whole frame stays one item
    for fname in ("dual.png", "quad.png", "cine.dcm"):
        part = t[names == fname]
        assert part["patient_id"].nunique() == 1 and part["label"].nunique() == 1 and part["split"].nunique() == 1
    assert (ds.labels == t["label"].to_numpy()).all()
    bad = ds.bad_report()
    assert sorted((r["path"].split("/")[-1], r["pane"]) for r in bad) == [("dual_doppler.png", 1), ("power.png", -1)]
    assert all("colour Doppler" in r["reason"] and "data.colour_frames=skip" in r["reason"] for r in bad)
    items = [ds[i] for i in range(len(ds))]
    assert all(it is not None and it["image"].shape == (1, 64, 64) for it in items)


def test_item_regions_are_the_layout_regions_of_their_panes(exports_dir, cache):
    ds = _build(exports_dir)
    for i in range(len(ds)):
        rec = ds.table.iloc[i]
        frame = decode(rec["path"], rec["kind"], int(rec["frame"]))
        lay = detect_layout(frame, details=False)
        img, region = ds.source_view(i, max_side=0)
        if rec["pane"] < 0:
            assert img.shape[:2] == frame.shape[:2] and (region == lay.region).all()
        else:
            t, b, lft, r = lay.panes[rec["pane"]].box
            assert (img == frame[t:b, lft:r]).all()
            assert (region == lay.panes[rec["pane"]].region[t:b, lft:r]).all()


def test_whole_frames_keep_every_pane_in_their_region(exports_dir, cache):
    ex = by_name(0)
    ds = _build(exports_dir, panes="whole")
    assert (ds.table["pane"] == -1).all() and len(ds) == 3 + 3  # dual, quad, single, 3 cine frames (Doppler skipped)
    i = int(np.nonzero(ds.table["path"].str.endswith("quad.png").to_numpy())[0][0])
    _, region = ds.source_view(i, max_side=0)
    truth = ex["quad_phased_800x600"]
    assert min((region & p).sum() / p.sum() for p in truth.panes) > 0.98
    assert not (region & truth.beside_all()).any()


def test_colour_frames_gray_and_keep(exports_dir, cache):
    gray = _build(exports_dir, colour_frames="gray")
    keep = _build(exports_dir, colour_frames="keep")
    for ds in (gray, keep):
        assert not ds.skipped and set(ds.table["colour"]) == {"", "colour-flow", "power"}
    i = int(np.nonzero(gray.table["path"].str.endswith("power.png").to_numpy())[0][0])
    img, region = gray.source_view(i, max_side=0)
    assert img.ndim == 2 and region.mean() > 0.1  # colour inpainted: a gray frame with its scan region
    img, _ = keep.source_view(i, max_side=0)
    assert img.ndim == 3 and colour_marks(img).mean() > 0.01
    assert gray[i] is not None and keep[i] is not None


def test_layout_scans_are_cached_and_redone_when_a_file_changes(exports_dir, cache, monkeypatch):
    calls = []
    real = panes_mod.scan_frame
    monkeypatch.setattr(panes_mod, "scan_frame", lambda *a: calls.append(a) or real(*a))
    first = _build(exports_dir)
    assert len(calls) == len(FILES) + 1  # the cine's three frames share one scan
    calls.clear()
    again = _build(exports_dir)
    assert not calls and again.table["pane"].tolist() == first.table["pane"].tolist()
    st = os.stat(exports_dir / "quad.png")
    os.utime(exports_dir / "quad.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited file: scan again
    _build(exports_dir)
    assert len(calls) == len(FILES) + 1


def test_simulated_sources_are_not_scanned(cache, monkeypatch):
    monkeypatch.setattr(panes_mod, "scan_frame", lambda *a: pytest.fail("simulated frames need no scan"))
    ds = build_dataset(DataConfig(num_images=8, sim_size=64, sim_frames_per_patient=2), None, (32, 32), False)
    assert len(ds) == 8 and (ds.table["pane"] == -1).all()


def test_keys_are_validated_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.panes='halves'.*split, whole"):
        load_config(None, ["data.panes=halves", "teacher.family=random"])
    with pytest.raises(ConfigError, match=r"data\.colour_frames='grey'.*did you mean 'gray'"):
        load_config(None, ["data.colour_frames=grey", "teacher.family=random"])
    Image.fromarray(by_name(0)["single_calipers_800x600"].image).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"panes='both' is not one of split, whole"):  # refused when built
        build_dataset(DataConfig(source="folder", root=str(tmp_path), panes="both"), None, (32, 32), False)


def test_every_frame_skipped_is_one_clear_error(tmp_path, cache):
    Image.fromarray(by_name(0)["power_linear_1024x768"].image).save(tmp_path / "power.png")
    with pytest.raises(DataError, match="data.colour_frames=gray"):
        build_dataset(DataConfig(source="folder", root=str(tmp_path)), None, (32, 32), False)


def test_parallel_scans_equal_serial_scans(tmp_path, monkeypatch):
    from tests.scanner_exports import dressed_single

    for i in range(64):  # the pool starts at 64 frames
        Image.fromarray(dressed_single(i % 4, 96).image).save(tmp_path / f"f{i:02d}.png")
    jobs = [(str(tmp_path / f"f{i:02d}.png"), "image", 0) for i in range(64)]
    monkeypatch.setenv("USJEPA_CACHE", str(tmp_path / "c1"))
    serial = panes_mod.scan_layouts(jobs, workers=1)
    monkeypatch.setenv("USJEPA_CACHE", str(tmp_path / "c2"))
    assert panes_mod.scan_layouts(jobs, workers=2) == serial and all(len(s["panes"]) == 1 for s in serial)


def test_a_dataset_table_is_not_expanded_twice(exports_dir, cache):
    from usjepa.data.dataset import UltrasoundDataset

    ds = _build(exports_dir)
    again = UltrasoundDataset(ds.table, ds.cfg, (64, 64), augment=False, source="manifest")
    assert again.table["pane"].tolist() == ds.table["pane"].tolist() and not again.skipped
