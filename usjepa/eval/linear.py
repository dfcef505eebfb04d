"""Linear probes on fixed features: a grid of heads (weight decay x feature set) fitted to their optima.

`linear_probe(train, val, test)` standardises each feature set with train statistics, fits every head of
the grid (see `usjepa.eval.linear_fit`: full-batch L-BFGS to a certified optimum by default, or the US-JEPA
AdamW recipe with solver="adamw"), picks the head that scores best on the validation split *before* the test
split is looked at, and reports test metrics for that head only. How close each head came to its optimum is in
the result (`grid`, `convergence`); heads that did not converge are flagged and never selected while any
converged head exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from usjepa.eval.linear_fit import (
    LBFGS_MAX_ITER,
    LBFGS_TOL,
    HeadFit,
    c_grid_wds,
    fit_adamw_heads,
    fit_lbfgs_heads,
    select_head,
)
from usjepa.eval.metrics import classification_metrics, regression_metrics
from usjepa.eval.splits import check_classes

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | Tensor
SOLVERS = ("lbfgs", "adamw")
WHITEN_MAX_DIM = 4096  # whitening needs a [D, D] eigendecomposition: beyond this the whitened heads are skipped
# The US-JEPA paper's probe recipe (App. D.2): the adamw solver's defaults
USJEPA_RECIPE = dict(lrs=(1e-3,), wds=(1e-4,), epochs=150, batch_size=32, patience=15, decay="decoupled")

__all__ = ["HeadFit", "LinearHead", "linear_probe", "select_head"]


def _as_tensor(x: ArrayLike, dtype=torch.float32) -> Tensor:
    return x.detach().to(dtype) if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


@dataclass
class LinearHead:
    """The selected head with its feature normalisation: scores any further (e.g. corrupted) test set."""

    features: str
    mu: Tensor  # [1, D] float64
    sd: Tensor  # [1, D] float64
    weight: Tensor  # [D, C] float64
    bias: Tensor  # [C] (-inf for classes absent from training: never predicted)
    task: str = "classification"
    y_mu: float = 0.0
    y_sd: float = 1.0

    def logits(self, feats: dict[str, Tensor] | ArrayLike) -> Tensor:
        """[N, C] raw outputs (standardised targets for regression) for features [N, D] or a feature-set dict.

        Computed in float64, as during fitting: features with large offsets keep their small spreads."""
        x = feats[self.features] if isinstance(feats, dict) else feats
        with torch.no_grad():
            x = _as_tensor(x, torch.float64).to(self.mu.device)
            return (((x - self.mu) / self.sd) @ self.weight + self.bias).float()

    def evaluate(self, x: dict[str, Tensor] | ArrayLike, y: ArrayLike, num_classes: int = 0) -> dict:
        """Metrics of this head on (x, y), plus `test_pred` (and `test_proba` for classification)."""
        yt = _as_tensor(y)
        m, pred, proba = _metrics(self.logits(x), yt.long() if self.task == "classification" else yt, self.task,
                                  num_classes or self.weight.shape[1], self.y_mu, self.y_sd)
        m["test_pred"] = pred
        if proba is not None:
            m["test_proba"] = proba
        return m


def _split(xy, name: str) -> tuple[dict[str, Tensor], Tensor]:
    if not isinstance(xy, (tuple, list)) or len(xy) != 2:
        raise ValueError(f"{name} must be a pair (X, y); X [N, D] (or a dict of named feature sets), y [N]")
    x, y = xy  # features kept in float64: float32 would erase small spreads riding on large offsets
    feats = {k: _as_tensor(v, torch.float64) for k, v in x.items()} if isinstance(x, dict) else \
        {"x": _as_tensor(x, torch.float64)}
    y = _as_tensor(y, torch.float32)
    for k, v in feats.items():
        if v.ndim != 2 or v.shape[0] != len(y):
            raise ValueError(f"{name} features '{k}' must be [N, D] with N = {len(y)} labels, got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} features '{k}' contain NaN or inf values; check the encoder's outputs")
    return feats, y


def shrinkage_whitener(x: Tensor) -> Tensor:
    """[D, D] map that whitens centred features x [N, D] under their Ledoit-Wolf shrunk covariance (float64).

    Encoder features carry strongly correlated, anisotropic noise; a linear head fitted on whitened features is
    the regularised cousin of linear discriminant analysis and can beat every L2 head on the raw axes (on the
    hard tasks of usjepa.eval.reference by 2-15 macro-F1 points). The shrinkage keeps it defined when D > N."""
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(x.cpu().numpy(), assume_centered=True)
    w, v = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
    w = w.clamp_min(float(w.max()) * 1e-12)
    return (v / w.sqrt()).to(x.device)


def _head_row(f: HeadFit, n_train: int, solver: str) -> dict:
    row = {"features": f.features, "lr": f.lr, "wd": f.wd, "epoch": f.epoch, "val_loss": f.val_loss,
           "val_score": f.val_score, "iterations": f.iterations, "grad_norm": f.grad_norm}
    if solver == "lbfgs":
        row.update(C=1.0 / (f.wd * n_train) if f.wd > 0 else float("inf"), rel_error=f.rel_error,
                   converged=f.converged)
    return row


def _convergence(fits: list[HeadFit], best: HeadFit, n_train: int, solver: str, tol: float) -> dict:
    """How converged the grid is; lbfgs heads whose certified distance to the optimum exceeds `tol` are listed."""
    if solver != "lbfgs":
        return {"solver": solver, "heads": len(fits), "checked": False,
                "max_grad_norm": max(f.grad_norm for f in fits)}
    bad = [f for f in fits if not f.converged]
    return {"solver": solver, "heads": len(fits), "checked": True, "tol": tol,
            "converged": len(fits) - len(bad), "selected_converged": bool(best.converged),
            "max_rel_error": max(f.rel_error for f in fits),
            "not_converged": [{"features": f.features, "wd": f.wd, "C": 1.0 / (f.wd * n_train) if f.wd > 0 else None,
                               "rel_error": f.rel_error, "iterations": f.iterations} for f in bad]}


def linear_probe(train, val, test=None, *, task: str = "classification", num_classes: int | None = None,
                 solver: str = "lbfgs", wds=None, tol: float = LBFGS_TOL, max_iter: int = LBFGS_MAX_ITER,
                 lrs=USJEPA_RECIPE["lrs"], epochs: int = USJEPA_RECIPE["epochs"],
                 batch_size: int = USJEPA_RECIPE["batch_size"], patience: int = USJEPA_RECIPE["patience"],
                 decay: str = USJEPA_RECIPE["decay"], standardize: bool = True, whiten: bool = False,
                 class_balanced: bool = False,
                 seed: int = 0, select_metric: str | None = None, device: str | torch.device = "cpu") -> dict:
    """Fit a grid of linear heads on fixed features, select on val, report test metrics of the selected head.

    train / val / test: (X, y) with X [N, D] or a dict {feature-set name: [N, D_k]} (several poolings or
    last-k sets, same keys in every split) and y [N] (class ids, or floats for task="regression").
    solver="lbfgs" (default): L2-regularised heads solved to their optimum for every weight decay in `wds`
    (default: the values matching scikit-learn's C = 1e-4 .. 1e4 in decades, wd = 1 / (C N)); `tol` is the
    certified relative distance to the optimum, `max_iter` the L-BFGS budget per head.
    solver="adamw": the US-JEPA recipe (defaults: lr 1e-3, wd 1e-4 decoupled, batch 32, cosine, 150 epochs,
    patience 15 on val loss); `lrs`, `epochs`, `batch_size`, `patience` and `decay` apply to it only.
    whiten (opt-in; lbfgs with standardize, D <= 4096): the grid also holds heads on each feature set whitened with
    its Ledoit-Wolf shrunk train covariance (feature set "<name>+whitened"), selected on val like every other head.
    Off by default: the standard probe (and the papers') is L2 logistic regression on standardised features, and
    whitened (LDA-like) heads lift weak encoders most, e.g. a random-init ViT, which narrows encoder comparisons.
    Returns the test metrics at the top level (macro_f1, balanced_acc, accuracy, macro_auroc,
    per_class_recall, confusion; or pearson_r, mae, r2), plus `selected` (feature set, wd, ...), `val` (the
    selected head's validation metrics), `grid` (every head: validation score, iterations, gradient norm and, for
    lbfgs, its certified relative error and `converged`), `convergence` (a summary) and `test_pred` /
    `test_proba` (or `test_pred` for regression).
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got '{task}'")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
    select_metric = select_metric or ("macro_f1" if task == "classification" else "r2")
    dev = torch.device(device)
    ftr, ytr = _split(train, "train")
    fva, yva = _split(val, "val")
    if set(ftr) != set(fva):
        raise ValueError(f"train and val feature sets differ: {sorted(ftr)} vs {sorted(fva)}")
    fte = yte = None
    if test is not None:
        fte, yte = _split(test, "test")
    mask = None
    if task == "classification":
        ytr, yva = ytr.long(), yva.long()
        for name, y in (("train", ytr), ("val", yva), ("test", yte)):
            if y is not None:
                check_classes(y.numpy(), name)
        num_classes = int(num_classes or int(max(ytr.max(), yva.max())) + 1)
        counts = torch.bincount(ytr, minlength=num_classes).double()
        cw = (len(ytr) / (num_classes * counts.clamp_min(1))).to(dev) if class_balanced else None
        mask = torch.where(counts > 0, 0.0, float("-inf")).to(dev)  # classes never seen in training
        y_mu, y_sd = 0.0, 1.0
    else:
        num_classes, cw = 1, None
        y_mu, y_sd = float(ytr.mean()), float(ytr.std())
        if not y_sd > 0:
            raise ValueError("the train split's regression targets are all equal; there is nothing to fit")
    norms: dict[str, tuple[Tensor, Tensor]] = {}
    xtr_list, xva_list, set_names = [], [], []
    base_of: dict[str, str] = {}
    proj_of: dict[str, Tensor] = {}
    for name in ftr:
        xtr, xva = ftr[name].to(dev), fva[name].to(dev)
        x64 = xtr.double()
        if standardize:  # statistics in float64: large offsets would otherwise swamp small spreads
            mu, sd = x64.mean(0, keepdim=True), x64.std(0, keepdim=True)
            sd = torch.where(sd > 1e-12 * mu.abs().clamp_min(1.0), sd, torch.ones_like(sd))  # constant columns
        else:
            mu, sd = torch.zeros_like(x64[:1]), torch.ones_like(x64[:1])
        norms[name] = (mu, sd)
        dt = torch.float64 if solver == "lbfgs" else torch.float32
        xs_tr, xs_va = (x64 - mu) / sd, (xva.double() - mu) / sd
        xtr_list.append(xs_tr.to(dt))
        xva_list.append(xs_va.to(dt))
        set_names.append(name)
        base_of[name] = name
        if whiten and standardize and solver == "lbfgs" and 1 < xs_tr.shape[1] <= WHITEN_MAX_DIM:
            proj = shrinkage_whitener(xs_tr)
            wname = f"{name}+whitened"
            xtr_list.append(xs_tr @ proj)
            xva_list.append(xs_va @ proj)
            set_names.append(wname)
            base_of[wname], proj_of[wname] = name, proj
    ytr_fit = (ytr.to(dev) - y_mu) / y_sd if task == "regression" else ytr.to(dev)
    yva_fit = (yva.to(dev) - y_mu) / y_sd if task == "regression" else yva.to(dev)
    common = dict(task=task, num_classes=num_classes, class_weight=cw, features=set_names, select_metric=select_metric)
    if solver == "lbfgs":
        grid_wds = list(wds) if wds is not None and len(wds) else c_grid_wds(len(ytr))
        fits = fit_lbfgs_heads(xtr_list, ytr_fit, xva_list, yva_fit, wds=grid_wds, logit_mask=mask, tol=tol,
                               max_iter=max_iter, **common)
    else:
        fits = fit_adamw_heads(xtr_list, ytr_fit, xva_list, yva_fit, lrs=list(lrs),
                               wds=list(wds) if wds is not None and len(wds) else list(USJEPA_RECIPE["wds"]),
                               epochs=epochs,
                               batch_size=batch_size, patience=patience, seed=seed, decay=decay, **common)
    best = select_head(fits)  # chosen on validation only; the test split has not been touched yet
    mu, sd = norms[base_of[best.features]]
    weight = best.weight.double().to(dev)
    if best.features in proj_of:  # a whitened head is a linear head on the standardised features: fold the map in
        weight = proj_of[best.features] @ weight
    head = LinearHead(base_of[best.features], mu, sd, weight, best.bias.double().to(dev), task, y_mu, y_sd)
    conv = _convergence(fits, best, len(ytr), solver, tol)
    if conv.get("not_converged"):
        worst = max(conv["not_converged"], key=lambda r: r["rel_error"])
        log.warning("linear probe: %d of %d heads did not reach their optimum within %d L-BFGS iterations "
                    "(worst: %s wd=%.3g, relative error bound %.2g > %.2g)%s", len(conv["not_converged"]),
                    len(fits), max_iter, worst["features"], worst["wd"], worst["rel_error"], tol,
                    "; they were not selected" if best.converged else "; NONE converged, the selected head is not "
                    "at its optimum")
    selected = {"features": best.features, "lr": best.lr, "wd": best.wd, "epoch": best.epoch}
    if solver == "lbfgs":
        selected.update(C=1.0 / (best.wd * len(ytr)) if best.wd > 0 else float("inf"), converged=best.converged,
                        rel_error=best.rel_error, iterations=best.iterations)
    out: dict = {"selected": selected, "solver": solver, "grid": [_head_row(f, len(ytr), solver) for f in fits],
                 "convergence": conv, "select_metric": select_metric, "num_classes": num_classes, "head": head}
    out["val"], _, _ = _metrics(head.logits(fva), yva, task, num_classes, y_mu, y_sd)
    if test is not None:
        metrics, pred, proba = _metrics(head.logits(fte), yte.long() if task == "classification" else yte, task,
                                        num_classes, y_mu, y_sd)
        out.update(metrics, test_pred=pred)
        if proba is not None:
            out["test_proba"] = proba
    return out


def _metrics(logits: Tensor, y: Tensor, task: str, num_classes: int, y_mu: float,
             y_sd: float) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """(metrics, predictions [N], class probabilities [N, C] or None) of one head's outputs [N, C]."""
    if task == "regression":
        pred = (logits[:, 0] * y_sd + y_mu).cpu().numpy()
        return regression_metrics(y.cpu().numpy(), pred), pred, None
    proba = torch.softmax(logits.float(), dim=1).cpu().numpy()
    pred = proba.argmax(1)
    return classification_metrics(y.cpu().numpy(), pred, proba, num_classes), pred, proba
