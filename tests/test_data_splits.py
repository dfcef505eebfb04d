"""Patient-grouped splits, leakage detection and balanced sampling weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usjepa.data import (
    DataConfig,
    DataError,
    SplitLeakageError,
    build_dataset,
    check_patient_leakage,
    make_patient_splits,
    sampling_weights,
)


def test_patient_splits_never_leak_and_follow_fractions():
    rng = np.random.default_rng(0)
    pids = [f"p{int(i)}" for i in rng.integers(0, 200, 2000)]
    s = make_patient_splits(pids, (0.7, 0.15, 0.15), seed=1)
    df = pd.DataFrame({"p": pids, "s": s})
    assert df.groupby("p")["s"].nunique().max() == 1
    per_patient = df.drop_duplicates("p")["s"].value_counts(normalize=True)
    assert abs(per_patient["train"] - 0.7) < 0.02 and abs(per_patient["test"] - 0.15) < 0.02
    assert np.array_equal(s, make_patient_splits(pids, (0.7, 0.15, 0.15), seed=1))
    assert not np.array_equal(s, make_patient_splits(pids, (0.7, 0.15, 0.15), seed=2))
    check_patient_leakage(pids, s)  # produced splits pass the checker


def test_small_sets_still_get_every_split():
    s = make_patient_splits(["a", "b", "c"], (0.8, 0.1, 0.1))
    assert sorted(s) == ["test", "train", "val"]


def test_leakage_is_detected_and_named():
    with pytest.raises(SplitLeakageError, match=r"pB: \['test', 'train'\]") as e:
        check_patient_leakage(["pA", "pB", "pB", "pC"], ["train", "train", "test", "val"], where="m.csv")
    assert "m.csv" in str(e.value) and "pA" not in str(e.value)


def test_a_leaking_manifest_is_refused(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    Image.fromarray((x * 8).astype(np.uint8)).save(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"] * 3, "patient_id": ["p1", "p1", "p2"], "split": ["train", "val", "test"]}
                 ).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(SplitLeakageError, match="p1"):
        build_dataset(DataConfig(source="manifest", manifest=str(tmp_path / "m.csv")), "train", (16, 16), False)


class _Fake:
    """The two arrays sampling_weights reads."""

    def __init__(self, datasets, organs=None):
        self.datasets = np.asarray(datasets, dtype=object)
        self.organs = np.asarray(organs if organs is not None else ["liver"] * len(datasets), dtype=object)

    def __len__(self):
        return len(self.datasets)


def test_per_dataset_cap_follows_usjepa_formula():
    ds = _Fake(["a"] * 10 + ["b"] * 100 + ["c"] * 1000)
    p = sampling_weights(ds, by="dataset", cap=50)
    group = {g: p[ds.datasets == g].sum() for g in "abc"}
    assert np.isclose(group["a"], 10 / 110) and np.isclose(group["b"], 50 / 110) and np.isclose(group["c"], 50 / 110)
    assert np.allclose(p[ds.datasets == "c"], p[ds.datasets == "c"][0])  # uniform within a dataset
    assert np.isclose(p.sum(), 1.0)
    assert np.allclose(sampling_weights(ds, by="dataset", cap=None), 1 / 1110)  # no cap: plain uniform


def test_organ_weights_and_errors():
    ds = _Fake(["a"] * 6, ["liver", "liver", "liver", "liver", "thyroid", "thyroid"])
    p = sampling_weights(ds, by="organ", cap=2, weights={"thyroid": 3.0})
    assert np.isclose(p[ds.organs == "thyroid"].sum(), 0.75)
    p = sampling_weights(ds, by="none", weights={"thyroid": 2.0})
    assert np.isclose(p[4] / p[0], 2.0)
    with pytest.raises(ValueError, match="kidney"):
        sampling_weights(ds, by="organ", weights={"kidney": 2.0})
    with pytest.raises(ValueError, match="balance"):
        sampling_weights(ds, by="probe")


# ----------------------------------------------------------------------------- groups: videos, not just patients


def _frame(rng, path):
    Image.fromarray(rng.integers(20, 235, (24, 24), dtype=np.uint8)).save(path)


def write_pocus_like(root, n_videos=16, frames=5, stills=6, seed=0):
    """An UltraBench POCUS-like folder: records carry `source` (the video or image file) and no patient id."""
    rng = np.random.default_rng(seed)
    d = root / "pocus_v1.0.1"
    (d / "images").mkdir(parents=True)
    recs = {"train_val": [], "test": []}
    for v in range(n_videos + stills):
        src, n = (f"Cov_clip{v}.mp4", frames) if v < n_videos else (f"Reg_still{v}.jpg", 1)
        for f in range(n):
            name = f"images/{src.split('.')[0]}_{f}.png"
            _frame(rng, d / name)
            recs["test" if v % 4 == 3 else "train_val"].append(
                {"source": src, "image": name, "pathology": ["regular", "covid"][v // 4 % 2], "label": v // 4 % 2})
    for k, v in recs.items():
        (d / f"{k}.json").write_text(json.dumps(v))
    return d


def test_a_pocus_like_dataset_keeps_every_video_on_one_side_of_every_split_and_carve(tmp_path):
    from usjepa.data.splits import carve, check_no_leakage

    root = write_pocus_like(tmp_path)
    cfg = DataConfig(source="ultrabench", root=str(root), task="label")
    parts = {s: build_dataset(cfg, s, (16, 16), False) for s in ("train", "val", "test")}
    video = {s: [Path(p).stem.rsplit("_", 1)[0] for p in ds.paths] for s, ds in parts.items()}
    assert all(len(v) for v in video.values())
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(video[a]) & set(video[b]), (a, b)
    # the probe suite's carve of val out of train+val (as configs/probe/ultrabench.yaml does) keeps videos whole too
    tv = pd.concat([parts["train"].table, parts["val"].table])
    keep, cut = carve(tv["_label"].to_numpy(), tv["patient_id"].tolist(), 0.3, seed=1)
    stems = tv["path"].map(lambda p: Path(p).stem.rsplit("_", 1)[0]).to_numpy()
    assert len(cut) and not set(stems[keep]) & set(stems[cut])
    check_no_leakage({"train": tv["patient_id"].iloc[keep], "val": tv["patient_id"].iloc[cut],
                      "test": parts["test"].patient_ids}, {"train": [(p, -1) for p in tv["path"].iloc[keep]]})
    # grouping by image (what the reader did before) would have put frames of one video on both sides
    frame_keep, frame_cut = carve(tv["_label"].to_numpy(), tv["path"].tolist(), 0.3, seed=1)
    assert set(stems[frame_keep]) & set(stems[frame_cut])


def test_the_leakage_check_normalises_ids_and_catches_one_image_under_two_ids(tmp_path):
    from usjepa.data.splits import check_no_leakage

    with pytest.raises(SplitLeakageError, match=r"P7: \['train', 'val'\]"):
        check_no_leakage({"train": ["P7 ", "p8"], "val": ["p7"], "test": ["unknown", "nan"]})
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png", "c.png"):
        _frame(rng, tmp_path / name)
    (tmp_path / "a_copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    items = {"train": [(str(tmp_path / "a.png"), -1), (str(tmp_path / "b.png"), -1)],
             "test": [(str(tmp_path / "a_copy.png"), -1), (str(tmp_path / "c.png"), -1)]}
    with pytest.raises(SplitLeakageError, match=r"1 image\(s\) appear in more than one split.*a.png"):
        check_no_leakage({"train": ["p1", "p2"], "test": ["p3", "p4"]}, items, where="m.csv")
    items["test"] = items["test"][1:]
    check_no_leakage({"train": ["p1", "p2"], "test": ["p4"]}, items)


def test_a_split_column_without_patient_ids_is_refused_unless_groups_none(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(6):
        _frame(rng, tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": i % 2, "split": ["train", "train", "val", "test"][i % 4]})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = DataConfig(source="manifest", manifest=str(tmp_path / "m.csv"), task="label")
    with pytest.raises(DataError, match=r"m.csv.*no patient or group id.*data.groups=none"):
        build_dataset(cfg, "train", (16, 16), False)
    assert len(build_dataset(dataclasses.replace(cfg, groups="none"), "train", (16, 16), False)) == 4
    videos = [{**r, "video_id": f"v{(i + 1) // 2}"} for i, r in enumerate(rows)]
    pd.DataFrame(videos).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(SplitLeakageError, match=r"video_id:v1: \['train', 'val'\]"):  # a video column is the group
        build_dataset(cfg, "train", (16, 16), False)
    with pytest.raises(DataError, match="data.groups=site names no column"):
        build_dataset(dataclasses.replace(cfg, groups="site"), "train", (16, 16), False)


def test_training_holdout_keeps_groups_whole():
    from usjepa.data.splits import holdout
    from usjepa.train.build import holdout_split

    groups = np.repeat([f"v{i}" for i in range(40)], 3)
    keep, out = holdout(len(groups), groups, 0.2, seed=5)
    assert len(out) == 24 and not set(groups[keep]) & set(groups[out])
    np.testing.assert_array_equal(holdout_split(len(groups), groups, 0.2, 0)[1], holdout(len(groups), groups, 0.2,
                                                                                            17)[1])
