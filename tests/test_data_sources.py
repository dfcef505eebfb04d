"""Sources: image folders (8/16-bit, bad files), manifests, DICOM (mono / RGB / YBR, multi-frame), video, UltraBench."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.scanner_exports import write_dicom_frames
from usjepa.data import DataConfig, DataError, build_dataset, collate_skip_bad
from usjepa.data.errors import BadItem
from usjepa.data.sources import decode, read_ultrabench, scan_folder


def _ramp(h=40, w=48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 2 * y) * 255 / (w + 2 * h)).astype(np.uint8)


def test_folder_reads_8_and_16_bit_and_reports_each_bad_file(tmp_path):
    img = _ramp()
    Image.fromarray(img).save(tmp_path / "a_good.png")
    Image.fromarray(np.stack([img] * 3, 2)).save(tmp_path / "b_good.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "c_good.bmp")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "d_16bit.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "e_16bit.tif")
    (tmp_path / "sub").mkdir()
    Image.fromarray(img).save(tmp_path / "sub" / "f_nested.png")
    Image.fromarray(np.zeros_like(img)).save(tmp_path / "x_black.png")
    (tmp_path / "x_empty.png").write_bytes(b"")
    (tmp_path / "x_corrupt.png").write_bytes(b"\x89PNG not really a png" * 20)
    full = (tmp_path / "a_good.png").read_bytes()
    (tmp_path / "x_truncated.png").write_bytes(full[: len(full) // 2])

    for name in ("d_16bit.png", "e_16bit.tif"):  # 16-bit keeps its precision and its scale
        v = decode(str(tmp_path / name), "image")
        assert v.dtype == np.float32 and np.allclose(v, img / 255.0, atol=1e-4)

    cfg = DataConfig(source="folder", root=str(tmp_path), bad_item_threshold=0.5, region="none")
    ds = build_dataset(cfg, None, (32, 32), augment=True)
    assert len(ds) == 10
    items = [ds[(i, 7)] for i in range(len(ds))]
    bad = {r["path"].split("/")[-1]: r["reason"] for r in ds.bad_report()}
    assert bad == {"x_black.png": "all-black frame", "x_empty.png": "empty file",
                   "x_truncated.png": "truncated file", "x_corrupt.png": "corrupt or unreadable"}
    good = [it for it in items if it is not None]
    assert len(good) == 6 and all(it["image"].shape == (1, 32, 32) for it in good)
    batch = collate_skip_bad(items[:4] + items[-4:])
    assert batch["num_bad"] == 4 and batch["image"].shape[0] == 4


def test_bad_share_over_threshold_raises_a_clear_error(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "a_good.png")
    for i in range(3):
        (tmp_path / f"b_empty{i}.png").write_bytes(b"")
    ds = build_dataset(DataConfig(source="folder", root=str(tmp_path), bad_item_threshold=0.5), None, (16, 16), False)
    assert ds[1] is None and ds[2] is None  # two bad of four: 50%, tolerated
    with pytest.raises(DataError, match="bad_item_threshold"):
        ds[3]


def test_bad_items_are_counted_across_dataloader_workers(tmp_path):
    for i in range(6):
        Image.fromarray(_ramp()).save(tmp_path / f"g{i}.png")
    (tmp_path / "zz_empty.png").write_bytes(b"")
    ds = build_dataset(DataConfig(source="folder", root=str(tmp_path), bad_item_threshold=0.5), None, (16, 16), False)
    dl = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=1, collate_fn=collate_skip_bad)
    batch = next(iter(dl))
    assert batch["num_bad"] == 1 and [r["reason"] for r in ds.bad_report()] == ["empty file"]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_monochrome_single_and_multi_frame(tmp_path, photometric):
    base = _ramp()
    frames = np.stack([base // (k + 1) for k in range(5)])
    write_dicom_frames(tmp_path / "cine.dcm", frames, photometric, patient="PAT7")
    write_dicom_frames(tmp_path / "single.dcm", frames[:1], photometric, bits=12, patient="PAT8")
    df = scan_folder(str(tmp_path), {"dicom"}, stride=2)
    cine = df[df["path"].str.endswith("cine.dcm")]
    assert cine["frame"].tolist() == [0, 2, 4] and set(cine["patient_id"]) == {"PAT7"}
    for k in (0, 2, 4):
        v = decode(str(tmp_path / "cine.dcm"), "dicom", k)
        want = frames[k] / 255.0
        assert np.allclose(v, 1 - want if photometric == "MONOCHROME1" else want, atol=1e-4)
    v = decode(str(tmp_path / "single.dcm"), "dicom", 0)
    want = frames[0] / 4095.0
    assert np.allclose(v, 1 - want if photometric == "MONOCHROME1" else want, atol=1e-4)


def test_dicom_rgb_and_ybr(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.stack([_ramp(), _ramp()[::-1], np.full((40, 48), 90, np.uint8)], axis=2)
    write_dicom_frames(tmp_path / "rgb.dcm", rgb[None], "RGB")
    write_dicom_frames(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL")[None], "YBR_FULL")
    assert np.allclose(decode(str(tmp_path / "rgb.dcm"), "dicom"), rgb / 255.0, atol=1e-4)
    assert np.abs(decode(str(tmp_path / "ybr.dcm"), "dicom") - rgb / 255.0).max() < 3 / 255


def test_video_frames_with_stride(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k in range(9):
            pix = np.repeat((_ramp(48, 64) // 8 + 20 * k + 20)[..., None], 3, axis=2)  # mean 20 k + 35
            frame = av.VideoFrame.from_ndarray(pix, format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cfg = DataConfig(source="video", root=str(tmp_path), frame_stride=3, region="none", task="none")
    ds = build_dataset(cfg, None, (24, 32), augment=False)
    assert len(ds) == 3 and len(set(ds.patient_ids)) == 1
    means = [float(ds[i]["image"].mean()) * 255 for i in range(3)]
    assert np.allclose(means, [35, 95, 155], atol=6), means


def test_manifest_csv_and_parquet_with_labels_and_splits(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "a.png")
    Image.fromarray(_ramp()[::-1]).save(tmp_path / "b.png")
    Image.fromarray(_ramp()[:, ::-1]).save(tmp_path / "c.png")  # one image per patient: a copy in another split
    Image.fromarray(_ramp()[::-1, ::-1]).save(tmp_path / "d.png")  # under another id would be refused as leakage
    df = pd.DataFrame({"image": ["a.png", "b.png", "c.png", "d.png"], "diagnosis": ["benign", "malignant"] * 2,
                       "patient": ["p1", "p2", "p3", "p4"], "split": ["train", "train", "val", "test"],
                       "organ": ["breast", "breast", "liver", "liver"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    df.to_parquet(tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        cfg = DataConfig(source="manifest", manifest=str(tmp_path / name), task="diagnosis")
        ds = build_dataset(cfg, "train", (16, 16), augment=False)
        assert ds.class_names == ["benign", "malignant"] and ds.labels.tolist() == [0, 1]
        assert int(ds[1]["label"]) == 1 and ds[1]["patient_id"] == "p2"
        assert list(ds.organs) == ["breast", "breast"]


def test_ultrabench_layout_with_scan_masks(tmp_path):
    root = tmp_path / "gbcu_v1.0.0"
    (root / "images").mkdir(parents=True)
    (root / "masks" / "scan").mkdir(parents=True)
    recs = {"train_val": [], "test": []}
    for i in range(6):
        img = np.zeros((40, 48), np.uint8)
        img[5:35, 8 + i: 40] = _ramp()[5:35, 8 + i: 40] + 1
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray((img > 0).astype(np.uint8)).save(root / "masks" / "scan" / f"im{i}.png")  # 0/1 like UltraBench
        split = "test" if i >= 4 else "train_val"
        recs[split].append({"image": f"images/im{i}.png", "scan_mask": f"masks/scan/im{i}.png", "label": i % 3,
                            "pathology": ["normal", "benign", "malignant"][i % 3], "patient": f"pt{i // 2}"})
    for k, v in recs.items():
        (root / f"{k}.json").write_text(json.dumps(v))
    table = read_ultrabench(str(tmp_path))
    assert set(table["split"]) == {"train", "val", "test"} and set(table["dataset"]) == {"gbcu"}
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    cfg = DataConfig(source="ultrabench", root=str(root), task="label", resize="squash")
    ds = build_dataset(cfg, "test", (40, 48), augment=False)
    assert ds.class_names == ["normal", "benign", "malignant"] and len(ds) == 2
    item = ds[0]
    want = np.asarray(Image.open(root / "masks" / "scan" / "im4.png")) > 0
    assert np.array_equal(item["region"].numpy(), want)


def test_an_unlabelled_folder_is_used_whole_and_a_labelled_one_is_split_by_patient(tmp_path, caplog):
    for i in range(10):
        Image.fromarray(np.roll(_ramp(), i, axis=1)).save(tmp_path / f"scan{i}.png")
    cfg = DataConfig(source="folder", root=str(tmp_path), region="none")
    with caplog.at_level(logging.INFO, logger="usjepa.data.build"):
        assert len(build_dataset(cfg, "train", (16, 16), augment=False)) == 10  # was 7: 70/15/15 of nothing
    assert "10 unlabelled items, all in 'train'" in caplog.text
    with pytest.raises(DataError, match="split 'val' .* is empty"):
        build_dataset(cfg, "val", (16, 16), augment=False)
    labelled = tmp_path / "labelled"
    for k, cls in enumerate(("benign", "malignant")):
        (labelled / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.roll(_ramp(), 3 * i + k, axis=0)).save(labelled / cls / f"{cls}{i}.png")
    cfg = DataConfig(source="folder", root=str(labelled), task="folder", region="none")
    with pytest.raises(DataError, match="no patient or group id.*data.groups=none"):  # nothing says who is who
        build_dataset(cfg, "train", (16, 16), augment=False)
    cfg = dataclasses.replace(cfg, groups="none")  # declared: every image is its own patient (specs are read-only)
    sizes = {s: len(build_dataset(cfg, s, (16, 16), augment=False)) for s in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 3, "test": 3}  # labelled: probes need val and test


def _set_frames(path, n: int) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = n
    ds.save_as(path)


def test_dicom_frame_count_is_checked_against_the_pixel_data(tmp_path, caplog):
    import pydicom
    from pydicom.uid import RLELossless

    frames = np.stack([np.roll(_ramp(), 5 * k, axis=1) for k in range(4)])
    write_dicom_frames(tmp_path / "short.dcm", frames)
    _set_frames(tmp_path / "short.dcm", 10)  # the header promises 10 frames; the pixel data holds 4
    write_dicom_frames(tmp_path / "rle.dcm", frames)  # the same lie in an encapsulated (compressed) file
    ds = pydicom.dcmread(tmp_path / "rle.dcm")
    ds.compress(RLELossless)
    ds.NumberOfFrames = 7
    ds.save_as(tmp_path / "rle.dcm")
    with caplog.at_level(logging.WARNING, logger="usjepa.data.sources"):
        df = scan_folder(str(tmp_path), {"dicom"})
    for name, declared in (("short.dcm", 10), ("rle.dcm", 7)):
        rows = df[df["path"].str.endswith(name)]
        assert rows["frame"].tolist() == [0, 1, 2, 3, 4]  # the 4 real frames + one row that reports the rest
        assert f"header declares {declared} frames (NumberOfFrames) but the pixel data holds 4" in caplog.text
        assert np.allclose(decode(str(tmp_path / name), "dicom", 3), frames[3] / 255.0, atol=1e-4)
        with pytest.raises(BadItem, match=f"frame 4 out of range: the header declares {declared} frames"):
            decode(str(tmp_path / name), "dicom", 4)
    dset = build_dataset(DataConfig(source="dicom", root=str(tmp_path), region="none", bad_item_threshold=0.5),
                         None, (16, 16), augment=False)
    assert sum(dset[i] is None for i in range(len(dset))) == 2
    assert sorted(r["reason"] for r in dset.bad_report()) == ["frame out of range"] * 2  # once per file


def test_dicom_without_a_readable_patient_id_is_counted_and_logged(tmp_path, caplog):
    write_dicom_frames(tmp_path / "a.dcm", _ramp()[None], patient="PAT1")
    write_dicom_frames(tmp_path / "b.dcm", _ramp()[None], patient="  ")  # blank
    (tmp_path / "c.dcm").write_bytes(b"\x00" * 10)  # unreadable header
    with caplog.at_level(logging.WARNING, logger="usjepa.data.sources"):
        df = scan_folder(str(tmp_path), {"dicom"})
    assert "2 of 3 DICOM files have no usable PatientID" in caplog.text
    assert "b.dcm (no PatientID)" in caplog.text and "c.dcm (unreadable header" in caplog.text
    pid = dict(zip(df["path"].str.rsplit("/", n=1).str[-1], df["patient_id"]))
    assert pid == {"a.dcm": "PAT1", "b.dcm": "b", "c.dcm": "c"}
