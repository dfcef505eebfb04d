"""Probe metrics: classification (macro-F1 headline), regression, and seeded bootstrap confidence intervals.

Point estimates come from scikit-learn; the bootstrap uses a vectorised confusion-matrix macro-F1
(checked against scikit-learn in the tests) so a 1000-resample CI costs milliseconds.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    r2_score,
    recall_score,
    roc_auc_score,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None,
                           num_classes: int | None = None) -> dict:
    """macro_f1, balanced_acc, accuracy, macro_auroc (one-vs-rest; nan when undefined), per_class_recall, confusion.

    Percentages are not used: every score is in [0, 1]. Classes are 0..num_classes-1.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    c = int(num_classes or max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    labels = np.arange(c)
    out = {
        # macro over the classes present in y_true or y_pred (sklearn's default): a class absent from the
        # test split and never predicted does not count as a zero
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else float("nan"),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "per_class_recall": recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0).tolist(),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "macro_auroc": float("nan"),
    }
    if proba is not None:
        out["macro_auroc"] = macro_auroc(y_true, np.asarray(proba), c)
    return out


def macro_auroc(y_true: np.ndarray, proba: np.ndarray, num_classes: int) -> float:
    """One-vs-rest macro AUROC over the classes present in y_true (nan when fewer than two are present)."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    scores = [roc_auc_score(y_true == k, proba[:, k]) for k in present]
    return float(np.mean(scores))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """pearson_r, mae, r2 (TUSA's reporting for continuous targets)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if len(y_true) < 2 or y_true.std() == 0 or y_pred.std() == 0:
        r = float("nan")
    else:
        r = float(np.corrcoef(y_true, y_pred)[0, 1])
    return {"pearson_r": r, "mae": float(mean_absolute_error(y_true, y_pred)), "r2": float(r2_score(y_true, y_pred))}


# ----------------------------------------------------------------------------- bootstrap


def macro_f1_weighted(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 under R item-weightings at once: y_true, y_pred [N], weights [R, N] -> [R].

    Integer weights are resample counts, so row r equals sklearn's macro-F1 on the r-th bootstrap resample.
    """
    weights = np.atleast_2d(weights)
    r, c = weights.shape[0], num_classes
    cell = (np.asarray(y_true, dtype=np.int64) * c + np.asarray(y_pred, dtype=np.int64))  # [N]
    codes = (np.arange(r)[:, None] * c * c + cell[None, :]).ravel()
    cm = np.bincount(codes, weights=weights.ravel(), minlength=r * c * c).reshape(r, c, c)  # [R, true, pred]
    tp = np.einsum("rkk->rk", cm)
    denom = cm.sum(2) + cm.sum(1)  # support + predicted = 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0  # classes in y_true or y_pred of this resample (sklearn's default label set)
    return f1.sum(1) / np.maximum(present.sum(1), 1)


def _weighted_metric(name: str, y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray, num_classes: int) -> np.ndarray:
    """A metric under item weights w [R, N] -> [R]."""
    if name == "macro_f1":
        return macro_f1_weighted(y_true, y_pred, w, num_classes)
    tot = w.sum(1)
    if name == "accuracy":
        return (w * (y_true == y_pred)).sum(1) / tot
    yt, yp = y_true.astype(np.float64)[None], y_pred.astype(np.float64)[None]
    if name == "mae":
        return (w * np.abs(yt - yp)).sum(1) / tot
    mt = (w * yt).sum(1, keepdims=True) / tot[:, None]
    if name == "r2":
        ss_res = (w * (yt - yp) ** 2).sum(1)
        ss_tot = (w * (yt - mt) ** 2).sum(1)
        return 1 - np.divide(ss_res, ss_tot, out=np.full_like(ss_res, np.nan), where=ss_tot > 0)
    if name == "pearson_r":
        mp = (w * yp).sum(1, keepdims=True) / tot[:, None]
        cov = (w * (yt - mt) * (yp - mp)).sum(1)
        den = np.sqrt((w * (yt - mt) ** 2).sum(1) * (w * (yp - mp) ** 2).sum(1))
        return np.divide(cov, den, out=np.full_like(cov, np.nan), where=den > 0)
    raise ValueError(f"no bootstrap for metric '{name}'; use macro_f1, accuracy, mae, r2 or pearson_r")


def bootstrap_ci(y_true: np.ndarray, y_preds: np.ndarray | list, metric: str = "macro_f1", num_classes: int = 0,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 groups: np.ndarray | list | None = None) -> tuple[float, float]:
    """Percentile CI of the seed-averaged metric under resampling of the test split.

    y_true [N]; y_preds [S, N] (one prediction vector per seed) or [N]. Each resample draws test items
    with replacement (or, with `groups`, whole patients, so frames of one patient move together) and
    scores every seed's predictions on that same draw, then averages over seeds.
    """
    y_true = np.asarray(y_true)
    preds = np.atleast_2d(np.asarray(y_preds))
    n = len(y_true)
    if n_boot <= 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if metric in ("macro_f1", "accuracy"):
        y_true = y_true.astype(np.int64)
        preds = preds.astype(np.int64)
        num_classes = int(num_classes or max(y_true.max(), preds.max()) + 1)
    if groups is None:
        inverse = np.arange(n)
    else:
        inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    g = int(inverse.max()) + 1
    stats = np.zeros(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        counts = rng.multinomial(g, np.full(g, 1.0 / g), size=r)  # [R, G] times each group is drawn
        w = counts[:, inverse].astype(np.float64)  # [R, N]
        per_seed = [_weighted_metric(metric, y_true, p, w, num_classes) for p in preds]
        stats[start:start + r] = np.nanmean(np.stack(per_seed), axis=0)
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
