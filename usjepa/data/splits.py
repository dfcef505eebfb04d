"""Patient-grouped train/val/test splits, and a check that a given split leaks no patient across its parts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from usjepa.data.errors import DataError

SPLITS = ("train", "val", "test")


class SplitLeakageError(DataError):
    """Frames of one patient sit in more than one split."""


def make_patient_splits(patient_ids: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                        seed: int = 0) -> np.ndarray:
    """Assign every item to 'train' / 'val' / 'test' so that all frames of a patient share one split.

    Patients are shuffled by `seed` and cut by patient count; each split with a positive fraction gets at least one
    patient when there are enough patients. Returns an array of split names aligned with `patient_ids`.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    pids = np.asarray([str(p) for p in patient_ids])
    uniq = np.unique(pids)
    order = np.random.default_rng(seed).permutation(len(uniq))
    f = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    n = len(uniq)
    n_val = int(round(f[1] * n))
    n_test = int(round(f[2] * n))
    if n >= int((f > 0).sum()):  # every requested split gets a patient when there are enough of them
        n_val = max(n_val, 1 if f[1] > 0 else 0)
        n_test = max(n_test, 1 if f[2] > 0 else 0)
    keep_train = 1 if f[0] > 0 and n > 1 else 0
    n_val = min(n_val, n - keep_train)
    n_test = min(n_test, n - keep_train - n_val)
    name = np.empty(n, dtype=object)
    name[order] = "train"
    name[order[:n_test]] = "test"
    name[order[n_test:n_test + n_val]] = "val"
    lookup = dict(zip(uniq.tolist(), name.tolist(), strict=True))
    return np.asarray([lookup[p] for p in pids.tolist()], dtype=object)


def check_patient_leakage(patient_ids: Sequence[str], splits: Sequence[str], where: str = "manifest") -> None:
    """Raise SplitLeakageError naming the patients whose frames appear in more than one split."""
    pids = np.asarray([str(p) for p in patient_ids])
    sp = np.asarray([str(s) for s in splits])
    if len(pids) != len(sp):
        raise ValueError(f"{len(pids)} patient ids but {len(sp)} split names")
    if not len(pids):
        return
    pairs = np.unique(np.stack([pids, sp], axis=1), axis=0)
    uniq, counts = np.unique(pairs[:, 0], return_counts=True)
    leaking = uniq[counts > 1]
    if len(leaking):
        detail = "; ".join(f"{p}: {sorted(pairs[pairs[:, 0] == p, 1].tolist())}" for p in leaking[:10])
        more = f" (and {len(leaking) - 10} more)" if len(leaking) > 10 else ""
        raise SplitLeakageError(f"{where}: {len(leaking)} patient(s) appear in more than one split, which leaks "
                                f"frames of one patient between training and evaluation: {detail}{more}. Re-split by "
                                "patient (usjepa.data.splits.make_patient_splits) or fix the split column.")
