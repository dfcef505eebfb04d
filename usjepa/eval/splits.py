"""Probe splits: few-shot subsets, item caps and the degenerate-split guard.

Carving a validation (or test) part out of train and the leakage check are the data package's grouped-split
utilities (usjepa.data.splits), re-exported here under the names the probe API has always used.
"""

from __future__ import annotations

import numpy as np

from usjepa.data.splits import SplitLeakageError, carve, check_no_leakage, label_codes
from usjepa.errors import UsjepaError

PatientLeakageError = SplitLeakageError  # the probe API's name for the same error (a DataError, so a UsjepaError)

__all__ = ["DegenerateSplitError", "PatientLeakageError", "cap_indices", "carve", "check_classes", "check_no_leakage",
           "few_shot_rows"]


class DegenerateSplitError(UsjepaError, ValueError):
    """A classification split with fewer than two classes: macro-F1 on it would be meaningless (100 for free)."""


def check_classes(labels: np.ndarray, split: str, where: str = "") -> None:
    """Refuse a classification split holding a single class (or none), naming the split and the class."""
    present = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    if len(present) < 2:
        what = f"a single class (label {int(present[0])})" if len(present) else "no labelled item"
        raise DegenerateSplitError(
            f"{where + ': ' if where else ''}the {split} split has {what}; a probe trained or scored on it would "
            "report a meaningless macro-F1. Use a split with at least two classes (check the split column, "
            "val_size / test_size, or few-shot shares).")


def few_shot_rows(labels: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """A stratified `share` of the rows: each class keeps round(share * n_c) items, at least one."""
    labels = np.asarray(labels)
    if share >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    codes = label_codes(labels)
    rows = []
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        k = max(1, int(round(share * len(idx))))
        rows.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(rows))


def cap_indices(n: int, max_items: int, seed: int = 0) -> np.ndarray:
    """All of range(n), or a seeded random `max_items` of them (sorted)."""
    if max_items <= 0 or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
