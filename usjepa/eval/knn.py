"""k-nearest-neighbour probe on L2-normalised features (cosine similarity), k chosen on validation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from usjepa.eval.metrics import classification_metrics, regression_metrics


def _t(x) -> Tensor:
    return x.detach().float() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def knn_predict(xtr: Tensor, ytr: Tensor, xq: Tensor, k: int, num_classes: int, task: str = "classification",
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Similarity-weighted vote of the k most cosine-similar training items (DINO's weighting exp(s / T)).

    Returns class probabilities [Q, C] (classification) or weighted-mean targets [Q] (regression).
    """
    xtr = F.normalize(xtr, dim=1)
    k = min(k, len(xtr))
    outs = []
    for s in range(0, len(xq), chunk):
        q = F.normalize(xq[s:s + chunk], dim=1)
        sim, nn_idx = (q @ xtr.T).topk(k, dim=1)  # [q, k]
        w = (sim / temperature).exp()
        if task == "regression":
            outs.append((w * ytr[nn_idx]).sum(1) / w.sum(1))
        else:
            votes = torch.zeros(len(q), num_classes).scatter_add_(1, ytr[nn_idx].long(), w)
            outs.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(outs)


def knn_probe(train, val, test=None, *, ks=(10, 20), task: str = "classification", num_classes: int | None = None,
              temperature: float = 0.07, center: bool = True) -> dict:
    """kNN on fixed features; k is picked on val (macro-F1, or R^2 for regression), test scored with that k only.

    train / val / test: (X [N, D], y [N]). `center` subtracts the training mean before the cosine similarity
    (a shared offset otherwise makes every item look alike). Returns the test metrics, `selected` {"k"},
    `val` metrics and `test_pred`.
    """
    (xtr, ytr), (xva, yva) = (_t(train[0]), _t(train[1])), (_t(val[0]), _t(val[1]))
    mu = xtr.mean(0, keepdim=True) if center else torch.zeros(1, xtr.shape[1])
    xtr, xva = xtr - mu, xva - mu
    if task == "classification":
        num_classes = int(num_classes or int(max(ytr.max(), yva.max())) + 1)

    def evaluate(x: Tensor, y: Tensor, k: int) -> tuple[dict, np.ndarray]:
        out = knn_predict(xtr, ytr, x, k, num_classes or 1, task, temperature)
        if task == "regression":
            pred = out.numpy()
            return regression_metrics(y.numpy(), pred), pred
        proba = out.numpy()
        pred = proba.argmax(1)
        return classification_metrics(y.long().numpy(), pred, proba, num_classes), pred

    metric = "macro_f1" if task == "classification" else "r2"
    scores = {int(k): evaluate(xva, yva, int(k))[0] for k in ks}
    best_k = max(scores, key=lambda k: (np.nan_to_num(scores[k][metric], nan=-np.inf), -k))
    out: dict = {"selected": {"k": best_k}, "val": scores[best_k],
                 "grid": [{"k": k, "val_score": s[metric]} for k, s in scores.items()]}
    if test is not None:
        m, pred = evaluate(_t(test[0]) - mu, _t(test[1]), best_k)
        out.update(m, test_pred=pred)
    return out
