"""Balanced sampling weights: US-JEPA's per-dataset cap and organ / dataset weighting."""

from __future__ import annotations

import numpy as np


def sampling_weights(dataset, by: str = "dataset", cap: int | None = 50000, weights: dict | None = None) -> np.ndarray:
    """Per-item draw probabilities (sum 1) that balance groups (`by` = "dataset" | "organ" | "none").

    Group g is drawn with probability w_g min(|g|, cap) / sum_h w_h min(|h|, cap) (cap None: |g|), spread uniformly
    over its items; w_g comes from `weights` (default 1; the dataset's `balance_weights` when None). With
    by="none" every item is equally likely unless `weights` names items' datasets or organs.
    """
    n = len(dataset)
    if n == 0:
        return np.zeros(0, np.float64)
    if weights is None:
        weights = dict(getattr(dataset, "balance_weights", {}) or {})
    if by in ("none", "", None):
        p = np.ones(n, np.float64)
        if weights:
            for attr in ("datasets", "organs"):
                groups = np.asarray(getattr(dataset, attr), dtype=object)
                p *= np.asarray([float(weights.get(str(g), 1.0)) for g in groups])
        return p / p.sum()
    attr = {"dataset": "datasets", "organ": "organs"}.get(by)
    if attr is None:
        raise ValueError(f"data.balance must be 'dataset', 'organ' or 'none', got '{by}'")
    groups = np.asarray([str(g) for g in getattr(dataset, attr)])
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    unknown = sorted(set(map(str, weights)) - set(uniq.tolist()))
    if unknown:
        raise ValueError(f"data.balance_weights names {unknown}, which are not {by} names of this data "
                         f"(known: {uniq.tolist()})")
    eff = np.minimum(counts, cap) if cap else counts.astype(np.float64)
    gw = eff * np.asarray([float(weights.get(g, 1.0)) for g in uniq])
    if gw.sum() <= 0:
        raise ValueError(f"data.balance_weights give every {by} weight 0")
    group_p = gw / gw.sum()
    p = group_p[inv] / counts[inv]
    return p / p.sum()
