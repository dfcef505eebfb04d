"""MAE pixel decoder (stage 1): visible encoder tokens + mask tokens -> pixels of every patch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from usjepa.models.layers import Block, init_weights, sincos_2d, xavier_init
from usjepa.models.rope import RopeTables
from usjepa.models.spec import POS_EMBEDS


class MAEDecoder(nn.Module):
    """MAE's decoder: the encoder's visible tokens (and its CLS token, when it has one) plus a shared mask token
    at every masked patch, positions by sin-cos (MAE) or RoPE (following the encoder); `init` follows the encoder's."""

    def __init__(
        self,
        in_dim: int,
        patch_size: int,
        out_chans: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        attn_backend: str = "auto",
        pos_embed: str = "sincos",
        init: str = "jepa",
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got '{pos_embed}'")
        self.rope = RopeTables(embed_dim // num_heads) if pos_embed == "rope" else None
        self.embed_dim = embed_dim
        self.decoder_embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_blocks = nn.ModuleList(Block(embed_dim, num_heads, backend=attn_backend) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_size * patch_size * out_chans)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        self.apply(xavier_init if init == "mae" else init_weights)  # MAE: xavier-uniform, like its encoder
        nn.init.normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for blk in self.decoder_blocks:
            blk.grad_checkpointing = enable

    def forward(self, visible: Tensor, keep: Tensor, grid: tuple[int, int], keep_valid: Tensor | None = None,
                cls: Tensor | None = None) -> Tensor:
        """visible [B, K, D] at patch indices keep [B, K] (+ the encoder's cls [B, D]) -> pixel predictions
        [B, N, p*p*C] for the whole grid."""
        B, K, _ = visible.shape
        N = grid[0] * grid[1]
        x = self.decoder_embed(visible)
        full = self.mask_token.to(x.dtype).expand(B, N + 1, -1).clone()  # [B, N+1, Dd]; slot N takes padding
        if keep_valid is not None:
            keep = torch.where(keep_valid, keep, torch.full_like(keep, N))
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)[:, :N]
        if self.rope is None:
            if grid not in self._pos_cache:
                self._pos_cache[grid] = sincos_2d(self.embed_dim, grid).unsqueeze(0)
            full = full + self._pos_cache[grid].to(full)
        prefix = 0
        if cls is not None:  # MAE passes the CLS token through the decoder (its position embedding is zero)
            full = torch.cat([self.decoder_embed(cls).unsqueeze(1), full], dim=1)
            prefix = 1
        kw = {} if self.rope is None else {"rope": self.rope.at(grid, None, full.device, prefix=prefix)}
        for blk in self.decoder_blocks:
            full = blk(full, **kw)
        return self.decoder_pred(self.decoder_norm(full[:, prefix:]))


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p*p*C] in raster patch order (MAE layout)."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)
