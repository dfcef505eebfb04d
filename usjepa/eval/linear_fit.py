"""Fitting linear heads on fixed features, two ways, both with autograd and torch.optim.

`fit_lbfgs_heads` (the default probe): every head minimises its L2-regularised objective
    mean-loss(x W + b) + wd / 2 * ||W||^2        (cross-entropy, or squared error for regression)
to its optimum with full-batch L-BFGS in float64. In scikit-learn's terms (C * sum-loss + ||W||^2 / 2) this is
wd = 1 / (C * N). The weight-decay grid is solved as a path from strong to weak regularisation (each solution
warm-starts the next); the feature sets are one batched problem at each grid point. A head counts as converged
when ||grad|| <= tol * wd * ||W||: by the wd-strong convexity of the objective the weights are then within `tol`
(relative) of the optimum. The heads that decide the selection (validation scores close to the best) are then
solved a hundred times further, so that no choice hinges on solver noise. Joint L-BFGS over the whole wd grid was
measured and rejected: one shared line search and curvature history needed over 20x the iterations of the path.

`fit_adamw_heads`: the US-JEPA paper's probe recipe (one nn.Linear-shaped head per lr x wd x feature set,
AdamW, cosine schedule per step, mini-batches, early stopping on validation loss keeping the best weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from usjepa.eval.metrics import classification_metrics, regression_metrics

# scikit-learn C values the default weight-decay grid stands for: 1e-4 .. 1e4 in decades (the grid a user tunes
# LogisticRegression over; a finer grid only adds selection noise on a small validation split)
C_GRID = tuple(10.0 ** k for k in range(-4, 5))
LBFGS_TOL = 1e-2  # certified relative distance of the weights to the optimum (measured: about 10x closer)
LBFGS_MAX_ITER = 500  # per head (grid point); a head that needs more is reported as not converged
_CHECK_EVERY = 25  # L-BFGS iterations between convergence checks
# heads whose validation score is within _REFINE_WITHIN of the best (at most _REFINE_MAX) are solved further, to
# tol * _REFINE_AIM: weakly regularised heads on separable data flip validation predictions at 1% errors
_REFINE_WITHIN, _REFINE_MAX, _REFINE_AIM = 0.02, 6, 1e-2


def c_grid_wds(n: int, cs=C_GRID) -> list[float]:
    """Weight decays equivalent to scikit-learn C values on n training items: wd = 1 / (C * n)."""
    return [1.0 / (float(c) * max(int(n), 1)) for c in cs]


@dataclass
class HeadFit:
    """One trained head and how it scored on validation; `converged` is None where no optimum is sought."""

    features: str
    wd: float
    lr: float | None  # adamw only
    epoch: int | None  # adamw: epoch of the kept (best validation loss) weights
    iterations: int  # L-BFGS iterations, or AdamW steps
    grad_norm: float  # ||gradient|| of the head's training objective at the kept weights
    rel_error: float  # lbfgs: grad_norm / (wd ||W||), the bound on the weights' relative distance to the optimum
    converged: bool | None
    val_loss: float
    val_score: float
    weight: Tensor  # [D, C]
    bias: Tensor  # [C]


def mean_loss(out: Tensor, y: Tensor, task: str, class_weight: Tensor | None) -> Tensor:
    """Per-head mean loss: outputs [H, N, C], targets [N] -> [H] (class weights as F.cross_entropy(weight=))."""
    if task == "regression":
        return ((out[..., 0] - y) ** 2).mean(-1)
    h, n, c = out.shape
    nll = F.cross_entropy(out.reshape(h * n, c), y.repeat(h), reduction="none").view(h, n)
    if class_weight is None:
        return nll.mean(1)
    w = class_weight[y]
    return (nll * w).sum(1) / w.sum()


def score(out: Tensor, y: Tensor, task: str, metric: str, num_classes: int) -> float:
    """Validation metric of one head's outputs [N, C] (higher is better; mae is negated)."""
    if task == "regression":
        m = regression_metrics(y.cpu().numpy(), out[:, 0].double().cpu().numpy())
        return -m["mae"] if metric == "mae" else m[metric]
    pred = out.argmax(1).cpu().numpy()
    return classification_metrics(y.cpu().numpy(), pred, None, num_classes)[metric]


def stack_padded(xs: list[Tensor], dtype: torch.dtype) -> Tensor:
    """[F, N, Dmax]: feature sets of different widths zero-padded (padded inputs never move an output)."""
    d = max(x.shape[1] for x in xs)
    return torch.stack([F.pad(x.to(dtype), (0, d - x.shape[1])) for x in xs])


def _val_losses(out: Tensor, y: Tensor, task: str, class_weight: Tensor | None) -> Tensor:
    """[H] validation losses over the items whose class the heads can predict (finite logits)."""
    if task == "regression":
        return mean_loss(out, y, task, None)
    keep = torch.isfinite(out[0].gather(1, y.unsqueeze(1)).squeeze(1))
    if not bool(keep.any()):
        return torch.full(out.shape[:1], float("inf"), dtype=out.dtype, device=out.device)
    return mean_loss(out[:, keep], y[keep], task, class_weight)


def _objective(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, mask: Tensor, task: str,
               class_weight: Tensor | None, wd: float) -> Tensor:
    """[F] regularised training objectives of the heads [F, D, C] / [F, C] on features [F, N, D]."""
    out = torch.baddbmm(bias.unsqueeze(1), x, weight) + mask  # [F, N, C]
    return mean_loss(out, y, task, class_weight) + 0.5 * wd * (weight * weight).sum((1, 2))


def _lbfgs_to_optimum(objective, weight: Tensor, bias: Tensor, wd: float, tol: float, max_iter: int,
                      n_params: Tensor, history_size: int, aim: float | None = None) -> tuple[Tensor, Tensor, int]:
    """Run L-BFGS on the summed objective until every head has ||grad|| <= aim * wd * ||W|| (aim = tol unless
    given) or the budget is spent. Returns (gradient norms [F], the norms each head needed to count as converged,
    tol * wd * ||W|| [F], iterations). The check runs every _CHECK_EVERY iterations; L-BFGS's own max-|grad| stop
    is set below every unfinished head's aim."""
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=_CHECK_EVERY, history_size=history_size,
                            tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective().sum()
        loss.backward()
        return loss

    iters, last = 0, -1
    while True:
        g_w, g_b = torch.autograd.grad(objective().sum(), [weight, bias])
        g = torch.sqrt((g_w * g_w).sum((1, 2)) + (g_b * g_b).sum(1))  # [F]
        wn = weight.detach().norm(dim=(1, 2))
        need = (tol * wd * wn).clamp_min(1e-12)  # [F]
        target = need if aim is None else (aim * wd * wn).clamp_min(1e-12)
        done = g <= target
        if bool(done.all()) or iters >= max_iter or iters == last:
            return g, need, iters
        opt.param_groups[0]["tolerance_grad"] = float((target / n_params.sqrt())[~done].min())
        last = iters
        opt.step(closure)
        iters = int(opt.state[weight]["n_iter"])


def fit_lbfgs_heads(xtr: list[Tensor], ytr: Tensor, xva: list[Tensor], yva: Tensor, *, task: str, num_classes: int,
                    wds: list[float], class_weight: Tensor | None = None, logit_mask: Tensor | None = None,
                    features: list[str] | None = None, select_metric: str = "macro_f1", tol: float = LBFGS_TOL,
                    max_iter: int = LBFGS_MAX_ITER, history_size: int = 10) -> list[HeadFit]:
    """Solve len(xtr) feature sets x len(wds) L2-regularised heads to their optima (see the module docstring).

    logit_mask [C]: 0, or -inf for classes absent from training (their logits stay -inf: never predicted, and
    their unpenalised bias cannot drift off to -inf). Heads are returned feature set by feature set, in wds order.
    """
    features = features or [f"x{i}" for i in range(len(xtr))]
    dt = torch.float64
    x = stack_padded(xtr, dt)  # [F, N, D]
    xv = stack_padded(xva, dt)
    f, _, d = x.shape
    c = 1 if task == "regression" else num_classes
    yt = ytr.to(dt) if task == "regression" else ytr
    yv = yva.to(dt) if task == "regression" else yva
    cw = None if class_weight is None else class_weight.to(dt)
    mask = torch.zeros(c, dtype=dt, device=x.device) if logit_mask is None else logit_mask.to(dt)
    widths = torch.tensor([t.shape[1] for t in xtr], dtype=dt, device=x.device)
    n_params = widths * c + c  # [F] parameters per head (padding excluded)
    weight = torch.zeros(f, d, c, dtype=dt, device=x.device, requires_grad=True)
    bias = torch.zeros(f, c, dtype=dt, device=x.device, requires_grad=True)
    results: dict[int, tuple] = {}
    for j in sorted(range(len(wds)), key=lambda i: -float(wds[i])):  # strong -> weak: each warm-starts the next
        if float(wds[j]) < 0:
            raise ValueError(f"weight decays must be >= 0, got {wds[j]}")
        objective = partial(_objective, weight, bias, x, yt, mask, task, cw, float(wds[j]))
        g, need, iters = _lbfgs_to_optimum(objective, weight, bias, float(wds[j]), tol, max_iter, n_params,
                                           history_size)
        results[j] = (weight.detach().clone(), bias.detach().clone(), g, g <= need, iters)

    heads = {(i, j): (results[j][0][i], results[j][1][i], results[j][2][i], bool(results[j][3][i]), results[j][4])
             for i in range(f) for j in range(len(wds))}  # (feature set, wd) -> (W, b, ||grad||, converged, iters)
    scored = {k: _score_head(k, heads[k], xv, yv, mask, task, cw, select_metric, c) for k in heads}
    for k in _contenders(scored, heads):  # the selection must not hinge on solver noise: solve close calls further
        i, j = k
        w0 = heads[k][0].unsqueeze(0).clone().requires_grad_(True)
        b0 = heads[k][1].unsqueeze(0).clone().requires_grad_(True)
        objective = partial(_objective, w0, b0, x[i:i + 1], yt, mask, task, cw, float(wds[j]))
        g, need, iters = _lbfgs_to_optimum(objective, w0, b0, float(wds[j]), tol, max_iter, n_params[i:i + 1],
                                           history_size, aim=tol * _REFINE_AIM)
        heads[k] = (w0.detach()[0], b0.detach()[0], g[0], bool(g[0] <= need[0]), heads[k][4] + iters)
        scored[k] = _score_head(k, heads[k], xv, yv, mask, task, cw, select_metric, c)
    out = []
    for i, name in enumerate(features):
        for j, wd in enumerate(wds):
            w, b, g, done, iters = heads[i, j]
            wn = float(w.norm())
            rel = float(g) / (float(wd) * wn) if float(wd) * wn > 0 else (0.0 if float(g) == 0 else math.inf)
            out.append(HeadFit(name, float(wd), None, None, iters, float(g), rel, done, *scored[i, j],
                               w[:xtr[i].shape[1]].clone(), b + mask))
    return out


def _score_head(key: tuple[int, int], head: tuple, xv: Tensor, yv: Tensor, mask: Tensor, task: str,
                class_weight: Tensor | None, metric: str, c: int) -> tuple[float, float]:
    """(validation loss, validation score) of head (feature set i, wd j)."""
    with torch.no_grad():
        vo = (xv[key[0]] @ head[0] + head[1] + mask).unsqueeze(0)  # [1, Nv, C]
        return float(_val_losses(vo, yv, task, class_weight)[0]), score(vo[0], yv, task, metric, c)


def _contenders(scored: dict, heads: dict) -> list[tuple[int, int]]:
    """Converged heads within _REFINE_WITHIN of the best validation score (at most _REFINE_MAX, best first)."""
    ok = [k for k in scored if heads[k][3] and np.isfinite(scored[k][1])]
    if not ok:
        return []
    best = max(scored[k][1] for k in ok)
    close = sorted((k for k in ok if scored[k][1] >= best - _REFINE_WITHIN), key=lambda k: -scored[k][1])
    return close[:_REFINE_MAX]


def fit_adamw_heads(xtr: list[Tensor], ytr: Tensor, xva: list[Tensor], yva: Tensor, *, task: str, num_classes: int,
                    lrs: list[float], wds: list[float], epochs: int = 150, batch_size: int = 32, patience: int = 15,
                    class_weight: Tensor | None = None, seed: int = 0, features: list[str] | None = None,
                    select_metric: str = "macro_f1", decay: str = "decoupled") -> list[HeadFit]:
    """Train len(xtr) feature sets x len(lrs) x len(wds) heads with torch.optim.AdamW; all see the same batches.

    Each head is an nn.Linear(D, C) (weights and bias drawn U(-1/sqrt(D), 1/sqrt(D)) from the seed's generator,
    once per feature set and shared by its heads). decay="decoupled": AdamW's weight decay on all head
    parameters, as `AdamW(head.parameters(), lr, weight_decay=wd)`; decay="l2": wd / 2 ||W||^2 added to the
    mean loss instead. The learning rate follows a cosine from lr to 0 over epochs x steps per epoch.
    patience > 0: a head stops after `patience` epochs without a lower validation loss and keeps its
    best-validation-loss weights; patience <= 0: every head runs all epochs and keeps its final weights.
    """
    if decay not in ("decoupled", "l2"):
        raise ValueError(f"decay must be 'decoupled' or 'l2', got '{decay}'")
    features = features or [f"x{i}" for i in range(len(xtr))]
    device = xtr[0].device
    n = xtr[0].shape[0]
    c = 1 if task == "regression" else num_classes
    grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
    gen = torch.Generator().manual_seed(int(seed))
    heads: list[tuple[Tensor, Tensor]] = []  # F x G heads, feature set major
    groups = []
    for xf in xtr:
        bound = 1 / math.sqrt(xf.shape[1])
        w0 = (torch.rand(xf.shape[1], c, generator=gen) * 2 - 1) * bound
        b0 = (torch.rand(c, generator=gen) * 2 - 1) * bound
        for lr, wd in grid:
            w = w0.to(device).clone().requires_grad_(True)
            b = b0.to(device).clone().requires_grad_(True)
            heads.append((w, b))
            groups.append({"params": [w, b], "lr": lr, "weight_decay": wd if decay == "decoupled" else 0.0})
    opt = torch.optim.AdamW(groups)
    g = len(grid)
    bs = n if batch_size <= 0 or batch_size >= n else batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, epochs * steps_per_epoch)
    active = [True] * len(heads)
    cosine = [lambda t, h=h: 0.5 * (1 + math.cos(math.pi * t / total)) * active[h] for h in range(len(heads))]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    l2 = torch.tensor([wd if decay == "l2" else 0.0 for _ in xtr for _, wd in grid], device=device)

    def outputs(xs: list[Tensor], rows: Tensor | None) -> Tensor:  # [F, G, B, C]
        out = []
        for i, xf in enumerate(xs):
            xb = xf if rows is None else xf[rows]
            ws = torch.stack([heads[i * g + k][0] for k in range(g)])  # [G, D, C]
            bs_ = torch.stack([heads[i * g + k][1] for k in range(g)])  # [G, C]
            out.append(torch.einsum("nd,gdc->gnc", xb, ws) + bs_.unsqueeze(1))
        return torch.stack(out)

    def train_losses(rows: Tensor | None) -> Tensor:  # [F * G]
        y = ytr if rows is None else ytr[rows]
        out = outputs(xtr, rows).flatten(0, 1)
        return mean_loss(out, y, task, class_weight) + 0.5 * l2 * torch.stack([(w * w).sum() for w, _ in heads])

    best = [(w.detach().clone(), b.detach().clone()) for w, b in heads]
    best_loss = [math.inf] * len(heads)
    best_epoch = [max(epochs - 1, 0)] * len(heads)
    bad = [0] * len(heads)
    steps = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(device) if bs < n else None
        for s in range(steps_per_epoch):
            rows = None if order is None else order[s * bs:(s + 1) * bs]
            opt.zero_grad()
            train_losses(rows).sum().backward()  # heads are independent: each gets its own mean-loss gradient
            opt.step()
            sched.step()
            steps += 1
        if patience <= 0:
            continue
        with torch.no_grad():
            vloss = mean_loss(outputs(xva, None).flatten(0, 1), yva, task, class_weight).tolist()
        for h, v in enumerate(vloss):
            if not active[h]:
                continue
            if v < best_loss[h]:
                best_loss[h], best_epoch[h], bad[h] = v, epoch, 0
                best[h] = (heads[h][0].detach().clone(), heads[h][1].detach().clone())
            else:
                bad[h] += 1
                active[h] = bad[h] < patience
                if not active[h]:
                    opt.param_groups[h]["lr"] = 0.0  # the scheduler's lambda keeps it at 0 from now on
        if not any(active):
            break
    if patience <= 0:
        best = [(w.detach().clone(), b.detach().clone()) for w, b in heads]
    with torch.no_grad():  # report: validation of the kept weights, full-batch gradient norm of the training loss
        for h, (w, b) in enumerate(best):
            heads[h][0].data.copy_(w)
            heads[h][1].data.copy_(b)
        val_out = outputs(xva, None)
        vloss = mean_loss(val_out.flatten(0, 1), yva, task, class_weight).tolist()
    opt.zero_grad()
    train_losses(None).sum().backward()
    fits = []
    for i, name in enumerate(features):
        for k, (lr, wd) in enumerate(grid):
            h = i * g + k
            w, b = heads[h]
            gn = float(torch.sqrt((w.grad * w.grad).sum() + (b.grad * b.grad).sum()))
            fits.append(HeadFit(name, wd, lr, int(best_epoch[h]), steps, gn, float("nan"), None, float(vloss[h]),
                                score(val_out[i, k], yva, task, select_metric, c), w.detach().clone(),
                                b.detach().clone()))
    return fits


def select_head(fits: list[HeadFit]) -> HeadFit:
    """Best validation score among converged heads (all heads when none converged or none is checked);
    ties go to the lower validation loss, then to the earlier head (grid order)."""
    pool = [i for i, f in enumerate(fits) if f.converged is not False] or list(range(len(fits)))

    def key(i: int):
        s = fits[i].val_score
        return (-(s if np.isfinite(s) else -np.inf), fits[i].val_loss, i)

    return fits[min(pool, key=key)]
