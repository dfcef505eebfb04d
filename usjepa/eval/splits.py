"""Probe splits: carving a validation (or test) part out of train, few-shot subsets, and the leakage guard.

All work on the rows of extracted features (labels and patient ids travel with them), are seeded,
and keep every patient's frames on one side of a cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from usjepa.errors import UsjepaError


class PatientLeakageError(UsjepaError, ValueError):
    """A patient's frames sit in more than one probe split."""


def check_no_leakage(parts: dict[str, Sequence[str]], where: str = "probe splits") -> None:
    """Refuse splits that share a patient; the message names the patients and their splits.

    Empty ids mean "unknown" (datasets without patient ids) and are not compared.
    """
    seen: dict[str, set[str]] = {}
    for split, ids in parts.items():
        for pid in set(map(str, ids)):
            if pid and pid.lower() not in ("nan", "none", "unknown"):
                seen.setdefault(pid, set()).add(split)
    leaking = sorted(p for p, s in seen.items() if len(s) > 1)
    if leaking:
        detail = "; ".join(f"{p}: {sorted(seen[p])}" for p in leaking[:10])
        more = f" (and {len(leaking) - 10} more)" if len(leaking) > 10 else ""
        raise PatientLeakageError(
            f"{where}: {len(leaking)} patient(s) appear in more than one split, so the probe would be scored on "
            f"patients it was trained on: {detail}{more}. Split the dataset by patient (e.g. carve val with "
            "val_size, which keeps patients together) or fix the split column of the source.")


def _n_from(size: float, n: int) -> int:
    return int(round(size * n)) if 0 < size < 1 else int(size)


def carve(labels: np.ndarray, patient_ids: Sequence[str], size: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, carved rows): about `size` items (>= 1) or share (< 1) moved out, whole patients at a time.

    Patients are shuffled (seeded) and taken class by class in proportion to the label mix, so the carved
    part is roughly stratified; with unique or missing ids this is an exact-size stratified sample.
    """
    labels = np.asarray(labels)
    n = len(labels)
    target = _n_from(size, n)
    if not 0 < target < n:
        raise ValueError(f"cannot carve {size} items out of a split of {n}; give a share in (0, 1) or a count < {n}")
    pids = np.asarray([str(p) if str(p) else f"__row{i}" for i, p in enumerate(patient_ids)]) if len(patient_ids) \
        else np.asarray([f"__row{i}" for i in range(n)])
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(pids, return_inverse=True)
    codes = _codes(labels)
    per_group = np.zeros((len(uniq), codes.max() + 1), dtype=np.int64)
    np.add.at(per_group, (inverse, codes), 1)
    major = per_group.argmax(1)  # each patient's majority label defines its stratum
    classes, class_counts = np.unique(codes, return_counts=True)
    exact = target * class_counts / n  # per-class quotas summing to target (largest remainder)
    quota = np.floor(exact)
    quota[np.argsort(-(exact - quota))[: int(target - quota.sum())]] += 1
    want = dict(zip(classes.tolist(), quota.tolist()))
    sizes = np.bincount(inverse, minlength=len(uniq))
    chosen = np.zeros(len(uniq), dtype=bool)
    taken = 0
    for c in classes.tolist():
        groups = rng.permutation(np.flatnonzero(major == c))
        got = 0
        for g in groups:  # take whole patients while that brings the class closer to its share
            if abs(got + sizes[g] - want[c]) >= abs(got - want[c]):
                continue
            chosen[g] = True
            got += sizes[g]
            taken += sizes[g]
    rest = rng.permutation(np.flatnonzero(~chosen))
    for g in rest:  # top up (rounding) from any class
        if taken >= target:
            break
        chosen[g] = True
        taken += sizes[g]
    is_carved = chosen[inverse]
    if is_carved.all():
        raise ValueError(f"carving {target} items took every patient of the split; use a smaller size")
    return np.flatnonzero(~is_carved), np.flatnonzero(is_carved)


def _codes(labels: np.ndarray) -> np.ndarray:
    """Labels as small non-negative ints (continuous targets fall into quartile bins)."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        if finite.any():
            edges = np.quantile(labels[finite], [0.25, 0.5, 0.75])
            return np.where(finite, np.searchsorted(edges, labels), 0).astype(int)
        return np.zeros(len(labels), dtype=int)
    return np.unique(labels, return_inverse=True)[1]


def few_shot_rows(labels: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """A stratified `share` of the rows: each class keeps round(share * n_c) items, at least one."""
    labels = np.asarray(labels)
    if share >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    codes = _codes(labels)
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
