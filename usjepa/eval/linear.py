"""Linear probes on fixed features: many heads (learning rate x weight decay x feature set) trained at once.

One batched weight tensor [H, D, C] holds every head of a feature set; a vectorised AdamW with a
per-head learning rate and decoupled weight decay updates them together, with a cosine schedule and
per-head early stopping on validation loss (each head keeps its best-validation-loss weights).
The head that scores best on the validation split is chosen *before* the test split is looked at;
test numbers are computed for that head only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from usjepa.eval.metrics import classification_metrics, regression_metrics

ArrayLike = np.ndarray | Tensor
# The default grid: L2-penalised heads trained to convergence (a convex problem), the penalty chosen on val.
GRID_LRS = (1e-3, 1e-2)
GRID_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class HeadFit:
    """One trained head (its best-validation-loss weights) and how it scored on validation."""

    features: str
    lr: float
    wd: float
    epoch: int  # epoch of the kept weights
    val_loss: float
    val_score: float
    weight: Tensor  # [D, C]
    bias: Tensor  # [C]


def _as_tensor(x: ArrayLike, dtype=torch.float32) -> Tensor:
    return x.detach().to(dtype) if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


def _loss(logits: Tensor, y: Tensor, task: str, class_weight: Tensor | None) -> Tensor:
    """Per-head mean loss: logits [..., N, C], y [N] -> [...]."""
    if task == "regression":
        return ((logits[..., 0] - y) ** 2).mean(-1)
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)  # [..., N]
    if class_weight is None:
        return nll.mean(-1)
    w = class_weight[y]  # weighted mean, as F.cross_entropy(weight=...) does
    return (nll * w).sum(-1) / w.sum()


def _grad_logits(logits: Tensor, y: Tensor, task: str, class_weight: Tensor | None) -> Tensor:
    """d(mean loss)/d(logits) in closed form (softmax cross-entropy or squared error): [..., B, C]."""
    if task == "regression":
        return 2 * (logits - y.unsqueeze(-1)) / y.shape[0]
    g = torch.softmax(logits, dim=-1)
    g = g - F.one_hot(y, g.shape[-1]).to(g.dtype)
    w = class_weight[y] / class_weight[y].sum() if class_weight is not None else g.new_full(y.shape, 1 / y.shape[0])
    return g * w.unsqueeze(-1)


def _score(pred_logits: Tensor, y: Tensor, task: str, metric: str, num_classes: int) -> float:
    if task == "regression":
        m = regression_metrics(y.cpu().numpy(), pred_logits[:, 0].cpu().numpy())
        return -m["mae"] if metric == "mae" else m[metric]
    pred = pred_logits.argmax(1).cpu().numpy()
    return classification_metrics(y.cpu().numpy(), pred, None, num_classes)[metric]


def _stack_padded(xs: list[Tensor]) -> Tensor:
    """[F, N, Dmax]: feature sets of different widths zero-padded (padded inputs never move an output)."""
    d = max(x.shape[1] for x in xs)
    return torch.stack([F.pad(x, (0, d - x.shape[1])) for x in xs])


def fit_linear_heads(xtr: list[Tensor], ytr: Tensor, xva: list[Tensor], yva: Tensor, *, task: str, num_classes: int,
                     lrs: list[float], wds: list[float], epochs: int = 150, batch_size: int = 0, patience: int = 15,
                     class_weight: Tensor | None = None, seed: int = 0, features: list[str] | None = None,
                     select_metric: str = "macro_f1", decay: str = "decoupled") -> list[HeadFit]:
    """Train len(xtr) feature sets x len(lrs) x len(wds) heads together; every head sees the same batches.

    patience > 0: each head stops after `patience` epochs without a lower validation loss and keeps its
    best-validation-loss weights. patience <= 0: every head runs all epochs and keeps its final weights.
    decay="decoupled": AdamW weight decay (w -= lr * wd * w); decay="l2": 0.5 * wd * |W|^2 added to the
    mean training loss (the penalty of L2-regularised logistic regression, wd = 1 / (C * N) in sklearn's terms).
    """
    if decay not in ("decoupled", "l2"):
        raise ValueError(f"decay must be 'decoupled' or 'l2', got '{decay}'")
    features = features or [f"x{i}" for i in range(len(xtr))]
    widths = [x.shape[1] for x in xtr]
    xtr_s, xva_s = _stack_padded(xtr), _stack_padded(xva)  # [F, N, D]
    device = xtr_s.device
    f, n, d = xtr_s.shape
    c = 1 if task == "regression" else num_classes
    grid = [(lr, wd) for lr in lrs for wd in wds]
    g = len(grid)
    lr_g = torch.tensor([x[0] for x in grid], device=device).view(1, g, 1, 1)
    wd_g = torch.tensor([x[1] for x in grid], device=device).view(1, g, 1, 1)
    gen = torch.Generator().manual_seed(int(seed))
    # nn.Linear's default initialisation, drawn once per feature set (bound from its own width), shared by its heads
    w0 = torch.stack([F.pad((torch.rand(w, c, generator=gen) * 2 - 1) / math.sqrt(w), (0, 0, 0, d - w))
                      for w in widths])  # [F, D, C]
    b0 = torch.stack([(torch.rand(c, generator=gen) * 2 - 1) / math.sqrt(w) for w in widths])  # [F, C]
    weight = w0.to(device).unsqueeze(1).repeat(1, g, 1, 1)  # [F, G, D, C]
    bias = b0.to(device).unsqueeze(1).repeat(1, g, 1)  # [F, G, C]
    m_w, v_w, m_b, v_b = (torch.zeros_like(weight), torch.zeros_like(weight), torch.zeros_like(bias),
                          torch.zeros_like(bias))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    bs = n if batch_size <= 0 or batch_size >= n else batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, epochs * steps_per_epoch)
    best_loss = torch.full((f, g), float("inf"), device=device)
    best_w, best_b = weight.clone(), bias.clone()
    best_epoch = torch.full((f, g), max(epochs - 1, 0), dtype=torch.long, device=device)
    bad = torch.zeros((f, g), dtype=torch.long, device=device)
    active = torch.ones((f, g), dtype=torch.bool, device=device)

    def outputs(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.einsum("fnd,fgdc->fgnc", x, w) + b.unsqueeze(2)  # [F, G, N, C]

    t = 0
    with torch.no_grad():
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen).to(device) if bs < n else None
            for s in range(steps_per_epoch):
                xb, yb = (xtr_s, ytr) if order is None else (xtr_s[:, order[s * bs:(s + 1) * bs]],
                                                             ytr[order[s * bs:(s + 1) * bs]])
                gl = _grad_logits(outputs(xb, weight, bias), yb, task, class_weight)  # [F, G, B, C]
                g_w = torch.einsum("fbd,fgbc->fgdc", xb, gl)
                g_b = gl.sum(2)
                if decay == "l2":
                    g_w = g_w + wd_g * weight
                t += 1
                sched = 0.5 * (1 + math.cos(math.pi * (t - 1) / total))  # cosine to 0 over the longest run
                m_w.lerp_(g_w, 1 - beta1)
                v_w.mul_(beta2).addcmul_(g_w, g_w, value=1 - beta2)
                m_b.lerp_(g_b, 1 - beta1)
                v_b.mul_(beta2).addcmul_(g_b, g_b, value=1 - beta2)
                c1, c2 = 1 - beta1 ** t, math.sqrt(1 - beta2 ** t)
                step = lr_g * (sched / c1) * active.view(f, g, 1, 1)  # [F, G, 1, 1]; stopped heads stay put
                if decay == "decoupled":
                    weight.mul_(1 - step * c1 * wd_g)  # decoupled weight decay, lr * wd (not on the bias)
                weight.sub_(step * m_w / (v_w.sqrt() / c2 + eps))
                bias.sub_(step[..., 0] * m_b / (v_b.sqrt() / c2 + eps))
            if patience <= 0:
                continue  # no early stopping: every head runs to the end and keeps its final weights
            vloss = _loss(outputs(xva_s, weight, bias), yva, task, class_weight)  # [F, G]
            better = (vloss < best_loss) & active
            best_loss = torch.where(better, vloss, best_loss)
            best_w = torch.where(better.view(f, g, 1, 1), weight, best_w)
            best_b = torch.where(better.view(f, g, 1), bias, best_b)
            best_epoch = torch.where(better, epoch, best_epoch)
            bad = torch.where(better, 0, bad + 1)
            active &= bad < patience
            if not bool(active.any()):
                break
        if patience <= 0:
            best_w, best_b = weight, bias
            best_loss = _loss(outputs(xva_s, weight, bias), yva, task, class_weight)
        val_out = outputs(xva_s, best_w, best_b)  # [F, G, N, C]
    fits = []
    for i, name in enumerate(features):
        for j, (lr, wd) in enumerate(grid):
            fits.append(HeadFit(name, lr, wd, int(best_epoch[i, j]), float(best_loss[i, j]),
                                _score(val_out[i, j], yva, task, select_metric, c),
                                best_w[i, j, :widths[i]].clone(), best_b[i, j].clone()))
    return fits


@dataclass
class LinearHead:
    """The selected head with its feature normalisation: scores any further (e.g. corrupted) test set."""

    features: str
    mu: Tensor  # [1, D]
    sd: Tensor  # [1, D]
    weight: Tensor  # [D, C]
    bias: Tensor  # [C]
    task: str = "classification"
    y_mu: float = 0.0
    y_sd: float = 1.0

    def logits(self, feats: dict[str, Tensor] | ArrayLike) -> Tensor:
        """[N, C] raw outputs (standardised targets for regression) for features [N, D] or a feature-set dict."""
        x = feats[self.features] if isinstance(feats, dict) else feats
        with torch.no_grad():
            return ((_as_tensor(x).to(self.mu.device) - self.mu) / self.sd) @ self.weight + self.bias

    def evaluate(self, x: dict[str, Tensor] | ArrayLike, y: ArrayLike, num_classes: int = 0) -> dict:
        """Metrics of this head on (x, y), plus `test_pred` (and `test_proba` for classification)."""
        yt = _as_tensor(y)
        m, pred, proba = _metrics(self.logits(x), yt.long() if self.task == "classification" else yt, self.task,
                                  num_classes or self.weight.shape[1], self.y_mu, self.y_sd)
        m["test_pred"] = pred
        if proba is not None:
            m["test_proba"] = proba
        return m


def select_head(fits: list[HeadFit]) -> HeadFit:
    """Best validation score; ties go to the lower validation loss, then to the earlier head (grid order)."""
    def key(i: int):
        s = fits[i].val_score
        return (-(s if np.isfinite(s) else -np.inf), fits[i].val_loss, i)

    return fits[min(range(len(fits)), key=key)]


def _split(xy, name: str) -> tuple[dict[str, Tensor], Tensor]:
    if not isinstance(xy, (tuple, list)) or len(xy) != 2:
        raise ValueError(f"{name} must be a pair (X, y); X [N, D] (or a dict of named feature sets), y [N]")
    x, y = xy
    feats = {k: _as_tensor(v) for k, v in x.items()} if isinstance(x, dict) else {"x": _as_tensor(x)}
    return feats, _as_tensor(y, torch.float32)


def linear_probe(train, val, test=None, *, task: str = "classification", num_classes: int | None = None,
                 lrs=GRID_LRS, wds=GRID_WDS, epochs: int = 100, batch_size: int = 256, patience: int = 0,
                 standardize: bool = True, class_balanced: bool = False, seed: int = 0,
                 select_metric: str | None = None, decay: str = "l2",
                 device: str | torch.device = "cpu") -> dict:
    """Train a grid of linear heads on fixed features, select on val, report test metrics of the selected head.

    train / val / test: (X, y) with X [N, D] or a dict {feature-set name: [N, D_k]} (several poolings or
    last-k sets, same keys in every split) and y [N] (class ids, or floats for task="regression").
    Returns the test metrics at the top level (macro_f1, balanced_acc, accuracy, macro_auroc,
    per_class_recall, confusion; or pearson_r, mae, r2), plus `selected` (feature set, lr, wd, epoch),
    `val` (the selected head's validation metrics), `grid` (every head's validation score) and
    `test_pred` / `test_proba` (or `test_pred` for regression).
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got '{task}'")
    select_metric = select_metric or ("macro_f1" if task == "classification" else "r2")
    dev = torch.device(device)
    ftr, ytr = _split(train, "train")
    fva, yva = _split(val, "val")
    if set(ftr) != set(fva):
        raise ValueError(f"train and val feature sets differ: {sorted(ftr)} vs {sorted(fva)}")
    if task == "classification":
        ytr, yva = ytr.long(), yva.long()
        num_classes = int(num_classes or int(max(ytr.max(), yva.max())) + 1)
        counts = torch.bincount(ytr, minlength=num_classes).float()
        cw = (len(ytr) / (num_classes * counts.clamp_min(1))).to(dev) if class_balanced else None
        y_mu, y_sd = 0.0, 1.0
    else:
        num_classes, cw = 1, None
        y_mu, y_sd = float(ytr.mean()), float(ytr.std().clamp_min(1e-8))  # heads fit standardised targets
    norms: dict[str, tuple[Tensor, Tensor]] = {}
    xtr_list, xva_list = [], []
    for name in ftr:
        xtr, xva = ftr[name].to(dev), fva[name].to(dev)
        if standardize:
            mu, sd = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
        else:
            mu, sd = torch.zeros(1, xtr.shape[1], device=dev), torch.ones(1, xtr.shape[1], device=dev)
        norms[name] = (mu, sd)
        xtr_list.append((xtr - mu) / sd)
        xva_list.append((xva - mu) / sd)
    ytr_fit = (ytr.to(dev) - y_mu) / y_sd if task == "regression" else ytr.to(dev)
    yva_fit = (yva.to(dev) - y_mu) / y_sd if task == "regression" else yva.to(dev)
    fits = fit_linear_heads(xtr_list, ytr_fit, xva_list, yva_fit, task=task, num_classes=num_classes, lrs=list(lrs),
                            wds=list(wds), epochs=epochs, batch_size=batch_size, patience=patience, class_weight=cw,
                            seed=seed, features=list(ftr), select_metric=select_metric, decay=decay)
    best = select_head(fits)  # chosen on validation only; the test split has not been touched yet
    head = LinearHead(best.features, *norms[best.features], best.weight, best.bias, task, y_mu, y_sd)
    predict = head.logits

    out: dict = {"selected": {"features": best.features, "lr": best.lr, "wd": best.wd, "epoch": best.epoch},
                 "grid": [{"features": f.features, "lr": f.lr, "wd": f.wd, "epoch": f.epoch, "val_loss": f.val_loss,
                           "val_score": f.val_score} for f in fits],
                 "select_metric": select_metric, "num_classes": num_classes, "head": head}
    out["val"], _, _ = _metrics(predict(fva), yva, task, num_classes, y_mu, y_sd)
    if test is not None:
        fte, yte = _split(test, "test")
        metrics, pred, proba = _metrics(predict(fte), yte.long() if task == "classification" else yte, task,
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
