"""Patient-grouped splits, leakage detection and balanced sampling weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usjepa.data import (
    DataConfig,
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
