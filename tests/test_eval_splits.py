import numpy as np
import pytest

from usjepa.eval.splits import PatientLeakageError, carve, check_no_leakage, few_shot_rows


def test_leakage_guard_names_the_shared_patients_and_ignores_unknown_ids():
    with pytest.raises(PatientLeakageError, match=r"2 patient\(s\).*p7: \['test', 'train'\].*p9: \['train', 'val'\]"):
        check_no_leakage({"train": ["p1", "p7", "p9"], "val": ["p2", "p9"], "test": ["p7", "p3"]})
    check_no_leakage({"train": ["", "a"], "val": ["", "b"], "test": ["", "c"]})  # no ids: nothing to compare


def test_carve_keeps_patients_whole_hits_the_size_and_keeps_the_label_mix():
    rng = np.random.default_rng(0)
    pids = np.repeat([f"p{i}" for i in range(200)], 5)  # 200 patients x 5 frames
    labels = np.repeat(rng.integers(0, 4, 200), 5)
    keep, cut = carve(labels, pids, 0.2, seed=1)
    assert set(pids[keep]).isdisjoint(pids[cut])
    assert len(keep) + len(cut) == 1000 and abs(len(cut) - 200) <= 5
    share = np.bincount(labels[cut], minlength=4) / len(cut)
    np.testing.assert_allclose(share, np.bincount(labels, minlength=4) / 1000, atol=0.03)
    again = carve(labels, pids, 0.2, seed=1)
    np.testing.assert_array_equal(again[1], cut)
    assert not np.array_equal(carve(labels, pids, 0.2, seed=2)[1], cut)


def test_carve_an_exact_count_without_patient_ids():
    labels = np.arange(300) % 3
    keep, cut = carve(labels, [""] * 300, 59, seed=0)
    assert len(cut) == 59 and np.bincount(labels[cut]).min() >= 19


def test_carve_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="cannot carve"):
        carve(np.zeros(10), [], 10)


def test_few_shot_subsets_are_stratified_seeded_and_keep_every_class():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    rows = few_shot_rows(labels, 0.05, seed=0)
    assert np.bincount(labels[rows]).tolist() == [45, 4, 1]  # round(5%) per class, at least one
    assert not np.array_equal(rows, few_shot_rows(labels, 0.05, seed=1))
    np.testing.assert_array_equal(few_shot_rows(labels, 1.0), np.arange(1000))
