"""Grouped splits and the one leakage check, used by every split, carve and held-out set in usjepa.

A *group* is the unit that must sit on one side of every cut: the patient when the source names one, else the
video / study / source file a frame came from (see usjepa.data.sources), else the item itself, which is only
accepted when the user declares that the data has no groups (data.groups=none). Ids are compared normalised
(surrounding whitespace stripped, case-folded), and the leakage check also catches one image filed under two
ids: the same file (or byte-identical copy) and frame on two sides of a cut.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

from usjepa.data.errors import DataError

SPLITS = ("train", "val", "test")
UNKNOWN_IDS = frozenset({"", "nan", "none", "null", "unknown", "n/a", "na"})
GROUPS_OPTION = "data.groups"  # auto | none | <column name>; see DataConfig
_WINDOW = 1 << 13  # bytes read at the start, middle and end of a file for the quick content key


class SplitLeakageError(DataError):
    """One group (patient, video, study) or one image sits in more than one split."""


def normalize_ids(ids: Sequence) -> np.ndarray:
    """Group ids as compared everywhere: str, stripped, case-folded; unknown markers (nan, none, ...) -> ''."""
    out = np.asarray(["" if v is None else str(v).strip().casefold() for v in ids], dtype=object)
    out[np.isin(out, list(UNKNOWN_IDS))] = ""
    return out


def _group_keys(ids: Sequence) -> np.ndarray:
    """Normalised ids where unknown ones become their own one-item group."""
    keys = normalize_ids(ids)
    empty = np.flatnonzero(keys == "")
    keys[empty] = [f"__row{i}" for i in empty]
    return keys


def make_group_splits(groups: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                      seed: int = 0) -> np.ndarray:
    """Assign every item to 'train' / 'val' / 'test' so that all items of a group share one split.

    Groups are shuffled by `seed` and cut by group count; each split with a positive fraction gets at least one
    group when there are enough groups. Returns an array of split names aligned with `groups`.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    keys = _group_keys(groups)
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    f = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    n = len(uniq)
    n_val = int(round(f[1] * n))
    n_test = int(round(f[2] * n))
    if n >= int((f > 0).sum()):  # every requested split gets a group when there are enough of them
        n_val = max(n_val, 1 if f[1] > 0 else 0)
        n_test = max(n_test, 1 if f[2] > 0 else 0)
    keep_train = 1 if f[0] > 0 and n > 1 else 0
    n_val = min(n_val, n - keep_train)
    n_test = min(n_test, n - keep_train - n_val)
    name = np.empty(n, dtype=object)
    name[order] = "train"
    name[order[:n_test]] = "test"
    name[order[n_test:n_test + n_val]] = "val"
    return name[inverse]


make_patient_splits = make_group_splits  # the name the package has exported since its first release


def holdout(num_items: int, groups: Sequence[str] | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows): a random `fraction` of the groups (at least one) held out whole.

    With fewer than two distinct groups it falls back to a random `fraction` of the items.
    """
    if fraction <= 0:
        return np.arange(num_items), np.arange(0)
    rng = np.random.default_rng(seed)
    keys = _group_keys(groups).astype(str) if groups is not None and len(groups) else None
    if keys is not None and len(set(keys.tolist())) > 1:
        uniq = np.unique(keys)
        n_out = max(1, int(round(len(uniq) * fraction)))
        is_out = np.isin(keys, rng.permutation(uniq)[:n_out])
    else:
        is_out = np.zeros(num_items, dtype=bool)
        is_out[rng.permutation(num_items)[: max(1, int(round(num_items * fraction)))]] = True
    return np.flatnonzero(~is_out), np.flatnonzero(is_out)


def size_from(size: float, n: int) -> int:
    """A count (>= 1) or a share (< 1) of n items as a count."""
    return int(round(size * n)) if 0 < size < 1 else int(size)


def carve(labels: np.ndarray, groups: Sequence[str], size: float, seed: int = 0,
          where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, carved rows): about `size` items (>= 1) or a share (< 1) moved out, whole groups at a time.

    Groups are shuffled (seeded) and taken class by class in proportion to the label mix, so the carved part is
    roughly stratified; with one item per group this is an exact-size stratified sample.
    """
    labels = np.asarray(labels)
    n = len(labels)
    target = size_from(size, n)
    if not 0 < target < n:
        raise ValueError(f"{where + ': ' if where else ''}cannot carve {size:g} items out of a split of {n}; give a "
                         f"share in (0, 1) or a count < {n}")
    keys = _group_keys(groups).astype(str) if len(groups) else np.asarray([f"__row{i}" for i in range(n)])
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(keys, return_inverse=True)
    codes = label_codes(labels)
    per_group = np.zeros((len(uniq), codes.max() + 1), dtype=np.int64)
    np.add.at(per_group, (inverse, codes), 1)
    major = per_group.argmax(1)  # each group's majority label defines its stratum
    classes, class_counts = np.unique(codes, return_counts=True)
    exact = target * class_counts / n  # per-class quotas summing to target (largest remainder)
    quota = np.floor(exact)
    quota[np.argsort(-(exact - quota))[: int(target - quota.sum())]] += 1
    want = dict(zip(classes.tolist(), quota.tolist()))
    sizes = np.bincount(inverse, minlength=len(uniq))
    chosen = np.zeros(len(uniq), dtype=bool)
    taken = 0
    for c in classes.tolist():
        got = 0
        for g in rng.permutation(np.flatnonzero(major == c)):  # whole groups while that nears the class's share
            if abs(got + sizes[g] - want[c]) >= abs(got - want[c]):
                continue
            chosen[g] = True
            got += sizes[g]
            taken += sizes[g]
    for g in rng.permutation(np.flatnonzero(~chosen)):  # top up (rounding) from any class
        if taken >= target:
            break
        chosen[g] = True
        taken += sizes[g]
    is_carved = chosen[inverse]
    if is_carved.all():
        raise ValueError(f"{where + ': ' if where else ''}carving {target} items took every group of the split; "
                         "use a smaller size")
    return np.flatnonzero(~is_carved), np.flatnonzero(is_carved)


def label_codes(labels: np.ndarray) -> np.ndarray:
    """Labels as small non-negative ints (continuous targets fall into quartile bins)."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        if finite.any():
            edges = np.quantile(labels[finite], [0.25, 0.5, 0.75])
            return np.where(finite, np.searchsorted(edges, labels), 0).astype(int)
        return np.zeros(len(labels), dtype=int)
    return np.unique(labels, return_inverse=True)[1]


# ----------------------------------------------------------------------------- the leakage check

_DIGESTS: dict[tuple, str] = {}


def _digest(path: str, size: int, mtime: int, full: bool) -> str:
    """sha256 of a file (full) or of three windows (start, middle, end); memoised per (path, size, mtime)."""
    key = (path, size, mtime, full)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if full:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            else:
                for at in (0, max(0, size // 2 - _WINDOW // 2), max(0, size - _WINDOW)):
                    f.seek(at)
                    h.update(f.read(_WINDOW))
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def shared_images(items: Mapping[str, Sequence[tuple[str, int]]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Images ((file, frame) with byte-identical files) found in more than one split.

    items: split name -> (path, frame) of each row. Files are compared by size first, then by three sampled
    windows, then by a full hash, so only likely duplicates are read. Unreadable files are skipped (they are
    reported as bad items elsewhere). Returns (content key, [(split, path), ...]) per shared image.
    """
    rows: list[tuple[str, str, int, int, int]] = []  # split, path, frame, size, mtime
    for split, its in items.items():
        for path, frame in its:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_size == 0:  # an empty file is a bad item, not an image
                continue
            rows.append((split, str(path), int(frame), st.st_size, st.st_mtime_ns))

    def across(keyed: dict) -> list:
        return [v for v in keyed.values() if len({r[0] for r in v}) > 1]

    def bucket(rs, key):
        out: dict = {}
        for r in rs:
            out.setdefault(key(r), []).append(r)
        return out

    candidates = [r for grp in across(bucket(rows, lambda r: (r[3], r[2]))) for r in grp]
    stage = bucket(candidates, lambda r: (r[3], r[2], _digest(r[1], r[3], r[4], False)))
    candidates = [r for grp in across(stage) for r in grp]
    final = bucket(candidates, lambda r: (r[2], _digest(r[1], r[3], r[4], True)))
    return [(f"{k[1][:12]}#{k[0]}", sorted({(r[0], r[1]) for r in v})) for k, v in final.items()
            if len({r[0] for r in v}) > 1]


def check_no_leakage(groups: Mapping[str, Sequence[str]], images: Mapping[str, Sequence[tuple[str, int]]] | None = None,
                     where: str = "splits") -> None:
    """Refuse splits that share a group (normalised ids; unknown ids are not compared) or an image.

    groups: split name -> group id of each row; images: split name -> (path, frame) of each row (optional).
    The message names the shared groups / files and their splits.
    """
    seen: dict[str, set[str]] = {}
    shown: dict[str, str] = {}
    for split, ids in groups.items():
        for raw, key in zip(ids, normalize_ids(ids), strict=True):
            if key:
                seen.setdefault(key, set()).add(split)
                shown.setdefault(key, str(raw).strip())
    leaking = sorted(k for k, s in seen.items() if len(s) > 1)
    if leaking:
        detail = "; ".join(f"{shown[k]}: {sorted(seen[k])}" for k in leaking[:10])
        more = f" (and {len(leaking) - 10} more)" if len(leaking) > 10 else ""
        raise SplitLeakageError(
            f"{where}: {len(leaking)} patient(s)/group(s) appear in more than one split, so a model would be scored "
            f"on patients it was trained on: {detail}{more}. Split by patient or video (a carve with val_size / "
            "test_size keeps groups whole) or fix the split column of the source.")
    shared = shared_images(images) if images else []
    if shared:
        detail = "; ".join(f"{[p for _, p in v][:2]} in {sorted({s for s, _ in v})}" for _, v in shared[:5])
        more = f" (and {len(shared) - 5} more)" if len(shared) > 5 else ""
        raise SplitLeakageError(
            f"{where}: {len(shared)} image(s) appear in more than one split under different ids (byte-identical "
            f"files): {detail}{more}. Remove the duplicates or give them the same patient id.")


def check_patient_leakage(patient_ids: Sequence[str], splits: Sequence[str], where: str = "manifest",
                          paths: Sequence[str] | None = None, frames: Sequence[int] | None = None) -> None:
    """The leakage check on a table: a group id, a split name (and optionally a file and frame) per row."""
    if len(patient_ids) != len(splits):
        raise ValueError(f"{len(patient_ids)} patient ids but {len(splits)} split names")
    sp = np.asarray([str(s) for s in splits])
    pids = np.asarray(list(patient_ids), dtype=object)
    parts = {s: pids[sp == s].tolist() for s in dict.fromkeys(sp.tolist())}
    images = None
    if paths is not None:
        fr = np.asarray(frames if frames is not None else [-1] * len(sp))
        pa = np.asarray(list(paths), dtype=object)
        images = {s: list(zip(pa[sp == s].tolist(), fr[sp == s].tolist(), strict=True)) for s in parts}
    check_no_leakage(parts, images, where)


def require_groups(has_groups: bool, option: str, where: str, why: str) -> None:
    """Refuse to split / check data whose items carry no patient or group id, unless data.groups=none says so."""
    if has_groups or option == "none":
        return
    raise DataError(f"{where}: the items have no patient or group id (a patient, subject, study or video column), "
                    f"so {why} cannot keep one patient's images on one side. Add such a column, point "
                    f"{GROUPS_OPTION} at the column that holds it, or set {GROUPS_OPTION}=none if every image is "
                    "from a different patient.")


def apply_groups(df, option: str, where: str):
    """The table with `patient_id` / `patient_given` set by data.groups: auto (as the source found them), none
    (each file is its own group: frames of one video stay together) or the name of a column holding the group."""
    if option in ("", "auto"):
        return df
    df = df.copy()
    if option == "none":
        df["patient_id"] = df["path"].astype(str)
        df["patient_given"] = True
        return df
    if option not in df.columns:
        raise DataError(f"{where}: {GROUPS_OPTION}={option} names no column of the data (columns: "
                        f"{[c for c in df.columns if not str(c).startswith('_')]}); use auto, none or one of them")
    given = normalize_ids(df[option].tolist()) != ""
    df["patient_id"] = [str(v).strip() if g else "" for v, g in zip(df[option], given, strict=True)]
    df["patient_given"] = given
    return df
