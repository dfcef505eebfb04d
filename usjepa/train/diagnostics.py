"""Collapse diagnostics on pooled student features [B, D]."""

from __future__ import annotations

import torch


@torch.no_grad()
def feature_std(feats: torch.Tensor) -> float:
    """Mean over dimensions of the batch std of L2-normalised features (collapse -> 0; healthy ~ 1/sqrt(D))."""
    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    return float(f.std(0).mean()) if f.shape[0] > 1 else 0.0


@torch.no_grad()
def effective_rank(feats: torch.Tensor) -> float:
    """RankMe-style exp(entropy) of the normalised singular values of the centred features."""
    f = feats.float()
    if f.shape[0] < 2:
        return 0.0
    s = torch.linalg.svdvals(f - f.mean(0, keepdim=True))
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
