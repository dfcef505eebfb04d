"""The probe settings of a suite, each run over seeds on fixed features and folded into one result row.

Settings: linear on the full training split, few-shot linear on stratified subsets, robustness (the
clean-trained linear heads scored on corrupted test images), kNN, and attentive probes on patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from usjepa.eval.attentive import attentive_probe
from usjepa.eval.features import FeatureSet
from usjepa.eval.knn import knn_probe
from usjepa.eval.linear import linear_probe
from usjepa.eval.metrics import bootstrap_ci
from usjepa.eval.splits import few_shot_rows

CLS_EXTRA = ("balanced_acc", "accuracy", "macro_auroc")
REG_EXTRA = ("pearson_r", "mae", "r2")


@dataclass
class ProbeSplits:
    """Labelled features of one encoder on one dataset (rows without a label / target already dropped)."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    label_kind: str  # classification | regression
    num_classes: int  # 0 for regression

    def y(self, fs: FeatureSet) -> np.ndarray:
        return fs.label if self.label_kind == "classification" else fs.target

    @property
    def metric(self) -> str:
        return "macro_f1" if self.label_kind == "classification" else "r2"

    @property
    def task(self) -> str:
        return "classification" if self.label_kind == "classification" else "regression"


def labelled(fs: FeatureSet, label_kind: str) -> FeatureSet:
    """Drop rows without a label (classification: label < 0) or target (regression: nan)."""
    keep = fs.label >= 0 if label_kind == "classification" else np.isfinite(fs.target)
    return fs if keep.all() else fs.subset(np.flatnonzero(keep))


def feature_sets(fs: FeatureSet, poolings, last_ks) -> dict[str, torch.Tensor]:
    """The named feature matrices of a grid: '<pooling>/k<k>' -> [N, D']; unavailable combinations are skipped."""
    out = {}
    for p in poolings:
        if "cls" in p and fs.cls is None:
            continue
        for k in last_ks:
            if k <= fs.last_k:
                out[f"{p}/k{k}"] = fs.pooled(p, k)
    return out or {"mean/k1": fs.pooled("mean", 1)}


def aggregate(results: list[dict], y_test: np.ndarray, splits: ProbeSplits, n_boot: int) -> dict:
    """mean / std (sample, over seeds) of the headline and secondary metrics, and the bootstrap CI of the mean."""
    metric = splits.metric
    vals = np.array([r[metric] for r in results], dtype=np.float64)
    row = {"metric": metric, "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
           "n_seeds": len(results)}
    for k in CLS_EXTRA if splits.label_kind == "classification" else REG_EXTRA:
        row[k] = float(np.nanmean([r.get(k, np.nan) for r in results])) if results else float("nan")
    pids = splits.test.patient_id
    groups = [p if p else f"__item{i}" for i, p in enumerate(pids)] if len(pids) == len(y_test) else None
    lo, hi = bootstrap_ci(y_test, np.stack([np.asarray(r["test_pred"]) for r in results]), metric,
                          splits.num_classes, n_boot=n_boot, seed=0, groups=groups)  # patients resampled whole
    row.update(ci_low=lo, ci_high=hi)
    row["selected"] = [_brief(r.get("selected")) for r in results]
    conv = [r.get("convergence") or {} for r in results]
    checked = [c for c in conv if c.get("checked")]
    # lbfgs: did every selected head reach its optimum, and how many heads of the grids did not (max over seeds)
    row["selected_converged"] = all(c["selected_converged"] for c in checked) if checked else None
    row["heads_not_converged"] = max(len(c["not_converged"]) for c in checked) if checked else None
    return row


def _brief(selected: dict | None) -> dict | None:
    """The selected head's settings, without unset or infinite values (the table stores them as JSON-like text)."""
    if selected is None:
        return None
    keep = ("features", "lr", "wd", "C", "epoch", "k")
    return {k: v for k, v in selected.items()
            if k in keep and (isinstance(v, str) or (v is not None and bool(np.isfinite(v))))}


def _linear_kwargs(p, splits: ProbeSplits, device) -> dict:
    return dict(task=splits.task, num_classes=splits.num_classes or None, solver=p.solver,
                wds=list(p.wds) or None, tol=p.tol, max_iter=p.max_iter, lrs=list(p.lrs), epochs=p.epochs,
                batch_size=p.batch_size, patience=p.patience, decay=p.decay, standardize=p.standardize,
                whiten=p.whiten,
                class_balanced=p.class_balanced and splits.label_kind == "classification",
                select_metric=p.select_metric if splits.label_kind == "classification" else "r2", device=device)


def run_linear(splits: ProbeSplits, p, device, rows: np.ndarray | None = None, seeds=None) -> list[dict]:
    """One grid (or preset head) per seed; `rows` restricts the training split (few-shot).

    lbfgs heads are solved to their optimum, which does not depend on the seed: the grid is fitted once (one
    result, whatever the seeds), so no spread over seeds is reported where there is none.
    """
    tr = splits.train if rows is None else splits.train.subset(rows)
    ftr, fva, fte = (feature_sets(f, p.pooling, p.last_k) for f in (tr, splits.val, splits.test))
    seeds = list(seeds if seeds is not None else p.seeds)
    out: list[dict] = []
    for seed in seeds[:1] if p.solver == "lbfgs" else seeds:
        out.append(linear_probe((ftr, splits.y(tr)), (fva, splits.y(splits.val)), (fte, splits.y(splits.test)),
                                seed=int(seed), **_linear_kwargs(p, splits, device)))
        out[-1]["seed"] = int(seed)
    return out


def run_few_shot(splits: ProbeSplits, p, device, share: float) -> list[dict]:
    """A fresh stratified subset per seed (the subset and the head both follow the seed)."""
    out = []
    for seed in p.seeds:
        rows = few_shot_rows(splits.y(splits.train), share, seed=int(seed))
        out += run_linear(splits, p, device, rows=rows, seeds=[seed])
        out[-1]["n_train"] = len(rows)
    return out


def run_robustness(heads: list[dict], corrupted: FeatureSet, splits: ProbeSplits, p) -> list[dict]:
    """Score each seed's clean-trained head on the corrupted test features (same items, same order)."""
    feats = feature_sets(corrupted, p.pooling, p.last_k)
    y = splits.y(corrupted)
    return [{**r["head"].evaluate(feats, y, splits.num_classes), "selected": r["selected"],
             "convergence": r.get("convergence")} for r in heads]


def run_knn(splits: ProbeSplits, p) -> list[dict]:
    """kNN over every available feature set and k; the (feature set, k) pair is chosen on val."""
    ftr, fva, fte = (feature_sets(f, p.pooling, p.last_k) for f in (splits.train, splits.val, splits.test))
    best = None
    for name in ftr:
        r = knn_probe((ftr[name], splits.y(splits.train)), (fva[name], splits.y(splits.val)), None, ks=list(p.knn_k),
                      task=splits.task, num_classes=splits.num_classes or None)
        score = r["val"][splits.metric]
        if best is None or (np.isfinite(score) and score > best[0]):
            best = (score, name, r["selected"]["k"])
    _, name, k = best
    r = knn_probe((ftr[name], splits.y(splits.train)), (fva[name], splits.y(splits.val)),
                  (fte[name], splits.y(splits.test)), ks=[k], task=splits.task, num_classes=splits.num_classes or None)
    r["selected"] = {"features": name, "k": k}
    return [r]


def run_attentive(splits: ProbeSplits, p, device) -> list[dict]:
    if splits.train.tokens is None:
        raise ValueError("attentive probing needs patch tokens; they were not extracted (protocol.attentive)")
    out = []
    for seed in p.seeds:
        r = attentive_probe((splits.train.tokens, splits.y(splits.train)), (splits.val.tokens, splits.y(splits.val)),
                            (splits.test.tokens, splits.y(splits.test)), task=splits.task,
                            num_classes=splits.num_classes or None, lrs=list(p.attentive_lrs),
                            wds=list(p.attentive_wds), epochs=p.attentive_epochs, depth=p.attentive_depth,
                            class_balanced=p.class_balanced and splits.label_kind == "classification",
                            standardize=bool(p.attentive_standardize), seed=int(seed), device=device)
        r.pop("model", None)
        out.append(r)
    return out
