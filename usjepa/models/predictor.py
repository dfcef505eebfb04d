"""The narrow JEPA predictor: context tokens + learned mask tokens at target positions -> teacher-width predictions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from usjepa.models.layers import Block, gather_tokens, init_weights, rescale_residual_branches, sincos_2d
from usjepa.models.layout import Segment, TokenLayout
from usjepa.models.rope import RopeTables
from usjepa.models.spec import POS_EMBEDS


class Predictor(nn.Module):
    """A ViT of its own depth/width (I-JEPA / SALT style).

    `per_block=True` predicts every target block in its own sequence with a copy of the context
    (I-JEPA, US-JEPA: blocks never see each other); False predicts all blocks in one sequence (V-JEPA, SALT).
    Positions: sin-cos added to context and mask tokens (I-JEPA), or RoPE in attention with no additive table
    (V-JEPA 2, `pos_embed="rope"`). V-JEPA 2 also sorts tokens by position before its blocks; attention without a
    causal mask is permutation-equivariant, so that changes nothing and is not done here.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 1,
        per_block: bool = True,
        attn_backend: str = "auto",
        pos_embed: str = "sincos",
        zero_init_mask_tokens: bool = False,
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got '{pos_embed}'")
        self.rope = RopeTables(embed_dim // num_heads) if pos_embed == "rope" else None
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.per_block = per_block
        self.predictor_embed = nn.Linear(in_dim, embed_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, backend=attn_backend) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(embed_dim, out_dim)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        self.apply(init_weights)
        if not zero_init_mask_tokens:  # I-JEPA: trunc-normal(0.02); V-JEPA / V-JEPA 2: zeros
            nn.init.trunc_normal_(self.mask_tokens, std=0.02)
        rescale_residual_branches(self.blocks)

    def pos_embed(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        if grid not in self._pos_cache:
            self._pos_cache[grid] = sincos_2d(self.embed_dim, grid).unsqueeze(0)  # [1, N, Dp]
        return self._pos_cache[grid].to(device=like.device, dtype=like.dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for blk in self.blocks:
            blk.grad_checkpointing = enable

    def token_layout(self, B: int, T: int, Kc: int, Kt: int, context_valid: Tensor | None,
                     targets_valid: Tensor | None, context_lengths, targets_lengths, device) -> TokenLayout | None:
        """Layout of the predictor's sequences from host lengths: per block, [context | one target block] for each of
        the B*T (sample, block) pairs; jointly, [context | T target blocks] per sample. None when nothing is padded."""
        ctx_len = None if context_lengths is None else np.asarray(context_lengths, dtype=np.int64).reshape(B)
        tgt_len = None if targets_lengths is None else np.asarray(targets_lengths, dtype=np.int64).reshape(B, T)
        if self.per_block:
            ctx = Segment(Kc, None if context_valid is None else
                          context_valid.unsqueeze(1).expand(B, T, Kc).reshape(B * T, Kc),
                          None if ctx_len is None else np.repeat(ctx_len, T))
            tgt = Segment(Kt, None if targets_valid is None else targets_valid.reshape(B * T, Kt),
                          None if tgt_len is None else tgt_len.reshape(B * T))
            layout = TokenLayout.from_segments([ctx, tgt], B * T, device)
        else:
            ctx = Segment(Kc, context_valid, ctx_len)
            tgt = Segment(T * Kt, None if targets_valid is None else targets_valid.reshape(B, T * Kt),
                          None if tgt_len is None else tgt_len.sum(1))
            layout = TokenLayout.from_segments([ctx, tgt], B, device)
        return None if layout.dense else layout

    def forward(
        self,
        context: Tensor,
        context_idx: Tensor,
        targets_idx: Tensor,
        grid: tuple[int, int],
        context_valid: Tensor | None = None,
        targets_valid: Tensor | None = None,
        mask_index: int = 0,
        context_lengths=None,
        targets_lengths=None,
    ) -> Tensor:
        """context [B, Kc, D], context_idx [B, Kc], targets_idx [B, T, Kt] -> predictions [B, T, Kt, out_dim].

        Padding is marked by `context_valid` [B, Kc] and `targets_valid` [B, T, Kt] (True = real token, on the
        device) with their counts `context_lengths` [B] and `targets_lengths` [B, T] (host integers, from the
        collator): the attention layout is decided from those without reading the device.
        """
        B, T, Kt = targets_idx.shape
        Kc = context.shape[1]
        x = self.predictor_embed(context)  # [B, Kc, Dp]
        m = self.mask_tokens[mask_index].to(x.dtype).expand(B, T * Kt, -1)  # [B, T*Kt, Dp]
        if self.rope is None:
            pos = self.pos_embed(grid, x).expand(B, -1, -1)  # [B, N, Dp]
            x = x + gather_tokens(pos, context_idx)
            m = m + gather_tokens(pos, targets_idx.reshape(B, T * Kt))
        layout = self.token_layout(B, T, Kc, Kt, context_valid, targets_valid, context_lengths, targets_lengths,
                                   x.device)
        if self.per_block:
            ctx = x.unsqueeze(1).expand(B, T, Kc, -1).reshape(B * T, Kc, -1)
            seq = torch.cat([ctx, m.reshape(B * T, Kt, -1)], dim=1)  # [B*T, Kc+Kt, Dp]
            positions = torch.cat([context_idx.unsqueeze(1).expand(B, T, Kc), targets_idx], dim=2)
            positions = positions.reshape(B * T, Kc + Kt)
        else:
            seq = torch.cat([x, m], dim=1)  # [B, Kc + T*Kt, Dp]
            positions = torch.cat([context_idx, targets_idx.reshape(B, T * Kt)], dim=1)
        kw = {} if self.rope is None else {"rope": self.rope.at(grid, positions, seq.device)}
        for blk in self.blocks:
            seq = blk(seq, layout, **kw)
        out = self.predictor_proj(self.predictor_norm(seq[:, -Kt if self.per_block else -T * Kt :]))
        return out.reshape(B, T, Kt, self.out_dim)
