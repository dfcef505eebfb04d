"""`usjepa data preview`: per-item region (source pixel grid) and model input equal what the dataset gives, one
contact sheet, and a table of what was skipped and why; configs with overrides; bad inputs in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.scanner_exports import by_name, write_dicom
from usjepa.cli import main
from usjepa.data.preview import _dataset, preview
from usjepa.data.sources import decode


@pytest.fixture()
def exports(tmp_path, monkeypatch):
    monkeypatch.setenv("USJEPA_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "exports"
    root.mkdir()
    ex = by_name(0)
    Image.fromarray(ex["dual_linear_1024x768"].image).save(root / "a_dual.png")
    Image.fromarray(ex["power_linear_1024x768"].image).save(root / "b_power.png")
    write_dicom(root / "c_single.dcm", ex["single_calipers_800x600"].image)
    (root / "d_empty.png").write_bytes(b"")
    return root


def test_preview_writes_what_the_dataset_gives(exports, tmp_path):
    out = tmp_path / "preview"
    args = [str(exports), "data.preprocess=usjepa", "data.bad_item_threshold=0.5", "model.img_size=[96,96]"]
    res = preview(args, out, n=10)
    assert res.items["name"].tolist() == ["a_dual_p0", "a_dual_p1", "c_single_f0"]
    assert sorted(zip(res.skipped["path"].map(lambda p: p.split("/")[-1]), res.skipped["reason"], strict=True)) == [
        ("b_power.png", "colour Doppler (power); data.colour_frames=skip"), ("d_empty.png", "empty file")]
    assert pd.read_csv(out / "skipped.csv").shape == (2, 4) and pd.read_csv(out / "items.csv").shape[0] == 3
    sheet = Image.open(out / "preview.png")
    assert sheet.width >= 3 * 320 and sheet.height >= 2 * 240  # 3 items + the 1 skipped frame that decodes
    ds = _dataset(str(exports), args[1:], 10)  # the same dataset, rebuilt: the files match it pixel for pixel
    for i, name in enumerate(res.items["name"]):
        region = np.asarray(Image.open(out / f"{name}_region.png"))
        inp = np.asarray(Image.open(out / f"{name}_input.png"))
        rec = ds.table.iloc[i]
        assert region.shape == decode(rec["path"], rec["kind"], int(rec["frame"])).shape[:2]  # the source grid
        _, item_region = ds.source_view(i, max_side=0)
        box = ds._views[i].box(region.shape) or (0, region.shape[0], 0, region.shape[1])
        assert set(np.unique(region)) <= {0, 255}
        assert ((region[box[0]:box[1], box[2]:box[3]] > 0) == item_region).all()
        outside = np.ones(region.shape, bool)
        outside[box[0]:box[1], box[2]:box[3]] = False
        assert not region[outside].any()
        expected = np.round(ds[i]["image"][0].numpy() * 255).astype(np.uint8)
        assert inp.shape == (96, 96) and (inp == expected).all()
    dual = by_name(0)["dual_linear_1024x768"]  # the two pane regions, in the source grid, are the two scans
    for k, truth in enumerate(dual.panes):
        region = np.asarray(Image.open(out / f"a_dual_p{k}_region.png")) > 0
        assert (region & truth).sum() / truth.sum() > 0.98 and not (region & dual.beside_all()).any()


def test_cli_previews_a_config_with_overrides(exports, tmp_path, capsys):
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(f"data:\n  source: folder\n  root: {exports}\n  bad_item_threshold: 0.5\nmodel:\n"
                   "  img_size: [32, 32]\nteacher:\n  family: random\n")
    out = tmp_path / "p"
    rc = main(["data", "preview", str(cfg), "data.panes=whole", "data.colour_frames=gray", "--out", str(out),
               "--n", "4"])
    printed = capsys.readouterr().out
    assert rc == 0 and "previewed 3 items" in printed and "empty file" in printed
    items = pd.read_csv(out / "items.csv")
    assert (items["pane"] == -1).all() and items.loc[items["name"] == "b_power", "colour"].item() == "power"
    assert (out / "a_dual_input.png").exists() and (out / "b_power_region.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["nowhere/at/all"], "nowhere/at/all"),
    (["data.panes=whole"], "comes before any config or path"),
])
def test_cli_bad_inputs_are_one_line(argv, needle, tmp_path, capsys):
    assert main(["data", "preview", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_bad_override_value_names_the_key(exports, tmp_path, capsys):
    assert main(["data", "preview", str(exports), "data.colour_frames=grey", "--out", str(tmp_path / "o")]) == 2
    assert "data.colour_frames='grey'" in capsys.readouterr().err
