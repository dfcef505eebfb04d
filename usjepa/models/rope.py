"""2-D rotary position embedding (RoPE), V-JEPA 2's axial layout on an image grid.

V-JEPA 2 splits each attention head's dimensions between the axes of the token grid (depth, height, width for
video) and rotates consecutive pairs (2i, 2i+1) of an axis' slice by position x omega_i, with
omega_i = 10000^(-i / (d_axis / 2)). On a 2-D grid the head splits in two halves: the first rotates by the
patch row, the second by the patch column (integer positions). The pairs rotate with the frequency of their
own index: V-JEPA 2's released code duplicates the frequencies across pairs instead (a bug its comments flag
and keep only for its pretrained weights); we have no such weights to match, so we use the rotation as defined.

This layout is exactly timm's axial `RotaryEmbeddingCat` (in_pixels=False, 'ij' indexing, temperature 10000,
interleaved pairs), so a RoPE encoder exports to timm's `Eva` (attn_type='rope'). Prefix tokens (CLS) are not
rotated, as in timm. Positions travel with the tokens (`gather`), so a context subset, a padded batch or a
truncated one gets each kept token's own position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

THETA = 10000.0


def check_head_dim(head_dim: int, where: str = "attention") -> None:
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4 ({where} has {head_dim}); "
                         "change embed_dim / num_heads or use pos_embed=sincos")


def rope_tables(head_dim: int, grid: tuple[int, int], device=None) -> tuple[Tensor, Tensor]:
    """(sin, cos) [H*W, head_dim] float32 in raster order: rows rotate the first half, columns the second."""
    check_head_dim(head_dim)
    n_freq = head_dim // 4  # pairs per axis
    omega = 1.0 / THETA ** (torch.arange(n_freq, dtype=torch.float64, device=device) / n_freq)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64, device=device),
                                torch.arange(grid[1], dtype=torch.float64, device=device), indexing="ij")
    ang = torch.cat([rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega], dim=1)  # [N, head_dim / 2]
    ang = ang.repeat_interleave(2, dim=1)  # one angle per pair member: [N, head_dim]
    return ang.sin().float(), ang.cos().float()


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of every consecutive pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


@dataclass
class Rope:
    """Rotations for the tokens of one sequence batch: sin / cos [B or 1, 1, L, Dh] for the L rotated tokens,
    which follow `prefix` unrotated tokens (CLS)."""

    sin: Tensor
    cos: Tensor
    prefix: int = 0

    def apply(self, x: Tensor) -> Tensor:
        """x [B, heads, prefix + L, Dh] -> rotated, in x's dtype (the rotation itself runs in float32)."""
        p = self.prefix
        body = x[:, :, p:]
        out = (body * self.cos + rotate_pairs(body) * self.sin).to(x.dtype)
        return torch.cat([x[:, :, :p], out], dim=2) if p else out


class RopeTables:
    """Per (grid, device) cache of a head dimension's tables; `at(grid, positions)` gathers them per token."""

    def __init__(self, head_dim: int):
        check_head_dim(head_dim)
        self.head_dim = head_dim
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(self, grid: tuple[int, int], device) -> tuple[Tensor, Tensor]:
        key = (tuple(grid), str(device))
        if key not in self._cache:
            self._cache[key] = rope_tables(self.head_dim, tuple(grid), device)
        return self._cache[key]

    def at(self, grid: tuple[int, int], positions: Tensor | None, device, prefix: int = 0) -> Rope:
        """positions [B, L] patch indices (None: the whole grid in raster order) -> Rope for those tokens."""
        sin, cos = self.tables(grid, device)
        if positions is None:
            return Rope(sin[None, None], cos[None, None], prefix)
        return Rope(sin[positions].unsqueeze(1), cos[positions].unsqueeze(1), prefix)  # [B, 1, L, Dh]
