"""Attentive probe (the V-JEPA protocol): a learned query cross-attends over frozen patch tokens, then a linear head.

Optional self-attention blocks run over the tokens first (V-JEPA 2 uses three). A small grid of
learning rates x weight decays is trained, each head for a fixed number of epochs with AdamW and a
cosine schedule; the head with the best validation score is chosen, then scored once on test.

Tokens are z-scored per channel with train statistics first (`standardize`; `protocol.attentive_standardize`,
on by default, also under the US-JEPA preset, whose linear recipe leaves pooled features raw): trained encoders
often carry one dominant direction that a per-token LayerNorm keeps, which buries the channels that carry the
signal and stalls the pooler at a fixed learning rate (a SALT student's lesion score went from 12% to 56%
macro-F1 with it on the simulated task, a random-init encoder's from 67% to 70%).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usjepa.eval.metrics import classification_metrics, regression_metrics


def _num_heads(dim: int) -> int:
    for h in (16, 12, 8, 6, 4, 3, 2):
        if dim % h == 0 and dim // h >= 32:
            return h
    return 1


class AttentivePooler(nn.Module):
    """[B, N, D] tokens -> [B, D]: `depth` pre-norm self-attention blocks, then cross-attention from learned queries.

    The cross-attention equals multi-head attention with queries `query`, keys and values LayerNorm(tokens),
    but is computed in token space: the projected query is pulled back through the key projection
    (scores = LN(x) . W_k^T q) and the values are projected after pooling (W_v (sum_n a_n LN(x_n))).
    That costs O(N D) per head instead of O(N D^2), so probing frozen tokens is cheap on a CPU.
    """

    def __init__(self, dim: int, num_queries: int = 1, depth: int = 0, num_heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads or _num_heads(dim)
        if dim % self.num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {self.num_heads} heads")
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, self.num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(depth))
        self.query = nn.Parameter(torch.zeros(1, num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def cross_attention(self, tokens: Tensor) -> Tensor:
        """Multi-head attention of the queries over LayerNorm(tokens): [B, N, D] -> [B, Q, D]."""
        b, n, d = tokens.shape
        h, dh = self.num_heads, d // self.num_heads
        xhat = F.layer_norm(tokens, (d,))  # [B, N, D]; the affine part of norm_kv is folded in below
        gamma, beta = self.norm_kv.weight, self.norm_kv.bias
        q = self.q_proj(self.query[0]).view(-1, h, dh)  # [Q, H, dh]
        wk = self.k_proj.weight.view(h, dh, d)  # key bias shifts every score of a query equally: no effect
        u = torch.einsum("qhe,hed->qhd", q, wk) * gamma  # [Q, H, D] the query pulled back to token space
        attn = torch.softmax(torch.einsum("bnd,qhd->bqhn", xhat, u) / math.sqrt(dh), dim=-1)  # [B, Q, H, N]
        pooled = torch.einsum("bqhn,bnd->bqhd", attn, xhat) * gamma + beta  # attention-weighted LN(x)
        v = torch.einsum("bqhd,hed->bqhe", pooled, self.v_proj.weight.view(h, dh, d)) + self.v_proj.bias.view(h, dh)
        return self.out_proj(v.reshape(b, -1, d))  # [B, Q, D]

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens
        for blk in self.blocks:
            x = blk(x)
        q = self.query + self.cross_attention(x)  # [B, Q, D]
        q = q + self.mlp(self.norm_mlp(q))
        return q.mean(1)  # [B, D]


class AttentiveClassifier(nn.Module):
    def __init__(self, dim: int, out_dim: int, depth: int = 0, num_queries: int = 1,
                 stats: tuple[Tensor, Tensor] | None = None):
        super().__init__()
        mean, std = stats if stats is not None else (torch.zeros(dim), torch.ones(dim))
        self.register_buffer("in_mean", mean.float().view(1, 1, dim))  # per-channel input standardisation
        self.register_buffer("in_std", std.float().view(1, 1, dim))
        self.pooler = AttentivePooler(dim, num_queries, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        x = (tokens - self.in_mean) / self.in_std
        return self.head(self.norm(self.pooler(x)))  # [B, out_dim]


def token_stats(tokens: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std over all items and tokens of [N, T, D] (float64 sums, chunked: no float32 copy)."""
    d = tokens.shape[-1]
    s, s2, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    for i in range(0, len(tokens), chunk):
        x = tokens[i:i + chunk].reshape(-1, d).double()
        s += x.sum(0)
        s2 += (x * x).sum(0)
        n += x.shape[0]
    mean = s / max(n, 1)
    var = (s2 / max(n, 1) - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-6)


def _predict(model: nn.Module, tokens: Tensor, device, batch_size: int = 256) -> Tensor:
    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(tokens), batch_size):
            outs.append(model(tokens[s:s + batch_size].to(device).float()).float().cpu())
    return torch.cat(outs)


def _train_one(xtr: Tensor, ytr: Tensor, *, task: str, out_dim: int, lr: float, wd: float, epochs: int,
               batch_size: int, depth: int, seed: int, device, class_weight: Tensor | None,
               stats: tuple[Tensor, Tensor] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AttentiveClassifier(xtr.shape[-1], out_dim, depth, stats=stats).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    n = len(xtr)
    bs = min(batch_size, n)
    steps = max(1, epochs * math.ceil(n / bs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    cw = None if class_weight is None else class_weight.to(device)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            out = model(xtr[idx].to(device).float())
            y = ytr[idx].to(device)
            loss = F.mse_loss(out[:, 0], y) if task == "regression" else F.cross_entropy(out, y, weight=cw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def attentive_probe(train, val, test=None, *, task: str = "classification", num_classes: int | None = None,
                    lrs=(1e-2, 1e-3), wds=(0.01, 0.1), epochs: int = 20, batch_size: int = 64, depth: int = 0,
                    class_balanced: bool = False, standardize: bool = True, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict:
    """Attentive probes on frozen patch tokens: train / val / test are (tokens [N, T, D], y [N]).

    `standardize`: z-score each channel with the train tokens' statistics (val / test use the same statistics).

    Returns the test metrics of the head with the best validation score, `selected` {lr, wd}, `val` and `grid`.
    """
    device = torch.device(device)
    xtr, ytr = torch.as_tensor(train[0]), torch.as_tensor(np.asarray(train[1]))
    xva, yva = torch.as_tensor(val[0]), torch.as_tensor(np.asarray(val[1]))
    if task == "classification":
        ytr, yva = ytr.long(), yva.long()
        num_classes = int(num_classes or int(max(ytr.max(), yva.max())) + 1)
        counts = torch.bincount(ytr, minlength=num_classes).float()
        cw = len(ytr) / (num_classes * counts.clamp_min(1)) if class_balanced else None
        out_dim, y_mu, y_sd, metric = num_classes, 0.0, 1.0, "macro_f1"
    else:
        ytr, yva = ytr.float(), yva.float()
        y_mu, y_sd = float(ytr.mean()), float(ytr.std().clamp_min(1e-8))
        out_dim, cw, metric = 1, None, "r2"

    def score(model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict, np.ndarray, np.ndarray | None]:
        out = _predict(model, x, device)
        if task == "regression":
            pred = (out[:, 0] * y_sd + y_mu).numpy()
            return regression_metrics(y.numpy(), pred), pred, None
        proba = torch.softmax(out, 1).numpy()
        return classification_metrics(y.numpy(), proba.argmax(1), proba, num_classes), proba.argmax(1), proba

    ytr_fit = (ytr - y_mu) / y_sd if task == "regression" else ytr
    stats = token_stats(xtr) if standardize else None
    grid, best = [], None
    for lr in lrs:
        for wd in wds:
            model = _train_one(xtr, ytr_fit, task=task, out_dim=out_dim, lr=lr, wd=wd, epochs=epochs,
                               batch_size=batch_size, depth=depth, seed=seed, device=device, class_weight=cw,
                               stats=stats)
            val_m = score(model, xva, yva)[0]
            s = val_m[metric] if np.isfinite(val_m[metric]) else -np.inf
            grid.append({"lr": lr, "wd": wd, "val_score": val_m[metric]})
            if best is None or s > best[0]:
                best = (s, lr, wd, model, val_m)
    _, lr, wd, model, val_m = best  # chosen on validation; test is scored once, below
    out: dict = {"selected": {"lr": lr, "wd": wd}, "val": val_m, "grid": grid, "model": model}
    if test is not None:
        m, pred, proba = score(model, torch.as_tensor(test[0]), torch.as_tensor(np.asarray(test[1])))
        out.update(m, test_pred=pred)
        if proba is not None:
            out["test_proba"] = proba
    return out
