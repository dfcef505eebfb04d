"""Transformer building blocks shared by the encoder, the predictor and the MAE decoder (timm key names).

Positions are either fixed 2-D sin-cos embeddings added to the tokens (I-JEPA, MAE) or 2-D RoPE inside
attention (V-JEPA 2, SALT; `usjepa.models.rope`), chosen by `pos_embed` ("sincos" | "rope").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from usjepa.models.attention import Attention
from usjepa.models.layout import TokenLayout


def sincos_2d(embed_dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, [H*W, D], raster order (row-major), as in MAE / I-JEPA."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs an embed dim divisible by 4, got {embed_dim}")
    gh, gw = grid
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [M, D/4]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D/2]

    emb = np.concatenate([axis(ys), axis(xs)], axis=1)  # [H*W, D]
    return torch.from_numpy(emb).float()


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; `layout` marks real (non-padding) tokens.

    With `grad_checkpointing` set (see `usjepa.models.checkpointing`), a forward that records gradients keeps only
    the block's input and recomputes the rest during backward (same RNG state, so drop-path draws match).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        backend: str = "auto",
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, layout: TokenLayout | None = None, rope=None) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, layout, rope, use_reentrant=False)
        return self._forward(x, layout, rope)

    def _forward(self, x: Tensor, layout: TokenLayout | None, rope) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), layout, rope))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_linear_and_norm(module: nn.Module, init_linear_weight) -> None:
    if isinstance(module, nn.Linear):
        init_linear_weight(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_weights(module: nn.Module) -> None:
    """trunc-normal(0.02) linears, unit LayerNorms (timm / I-JEPA convention)."""
    _init_linear_and_norm(module, lambda w: nn.init.trunc_normal_(w, std=0.02))


def xavier_init(module: nn.Module) -> None:
    """xavier-uniform linears, unit LayerNorms (MAE's `_init_weights`)."""
    _init_linear_and_norm(module, nn.init.xavier_uniform_)


def rescale_residual_branches(blocks: nn.ModuleList) -> None:
    """Scale each block's output projections by 1/sqrt(2*layer) so deep stacks start stable."""
    for i, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x: [B, N, D], idx: [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
