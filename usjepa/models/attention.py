"""Multi-head self-attention with one kernel chosen at construction: xformers, SDPA or an explicit math path.

`auto` picks xformers' memory-efficient attention on CUDA when it imports, else PyTorch's
`scaled_dot_product_attention`; `math` is a plain softmax(QK^T)V reference. The env var
USJEPA_ATTN (xformers|sdpa|math) overrides `auto`. Variable numbers of tokens per sample are
handled by a key-padding mask (`valid`, [B, N] bool): SDPA/math use a boolean attention mask,
xformers packs the valid tokens into a block-diagonal batch.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKENDS = ("xformers", "sdpa", "math")
_announced: set[str] = set()
_xformers_ops = None


def _load_xformers():
    """Import xformers.ops once, only when CUDA exists (its CPU import only prints warnings)."""
    global _xformers_ops
    if _xformers_ops is None:
        if not torch.cuda.is_available():
            _xformers_ops = False
        else:
            try:
                import xformers.ops as xops  # noqa: PLC0415

                _xformers_ops = xops
            except Exception as e:  # ImportError, or a build that does not match this torch
                log.warning("xformers is not usable (%s); attention falls back to SDPA", e)
                _xformers_ops = False
    return _xformers_ops or None


def resolve_backend(requested: str = "auto") -> str:
    """The backend a new attention layer will use; logged once per distinct choice."""
    if requested == "auto":
        requested = os.environ.get("USJEPA_ATTN", "auto") or "auto"
    if requested == "auto":
        choice = "xformers" if _load_xformers() is not None else "sdpa"
    elif requested in BACKENDS:
        choice = requested
        if choice == "xformers" and _load_xformers() is None:
            raise RuntimeError(
                "attention backend 'xformers' was requested but xformers cannot run here (it needs CUDA and a build "
                "matching this torch); set model.attn_backend=sdpa or auto"
            )
    else:
        raise ValueError(f"unknown attention backend '{requested}'; use one of auto, {', '.join(BACKENDS)}")
    if choice not in _announced:
        _announced.add(choice)
        log.info("attention backend: %s", choice)
    return choice


def math_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None) -> Tensor:
    """Reference attention. q, k, v: [B, H, N, Dh]; valid: [B, N] keys that may be attended to."""
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)  # [B, H, N, N]
    if valid is not None:
        attn = attn.masked_fill(~valid[:, None, None, :], float("-inf"))
    attn = attn.float().softmax(dim=-1).to(q.dtype)
    return attn @ v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None) -> Tensor:
    mask = None if valid is None else valid[:, None, None, :]  # [B, 1, 1, N] broadcast over heads and queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None) -> Tensor:
    """xformers memory-efficient attention; padded batches are packed into one block-diagonal sequence."""
    xops = _load_xformers()
    B, H, N, Dh = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, H, Dh]
    if valid is None or bool(valid.all()):
        out = xops.memory_efficient_attention(q, k, v)
        return out.transpose(1, 2)
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask  # noqa: PLC0415

    lengths = valid.sum(1).tolist()
    flat = valid.reshape(-1)
    pack = lambda t: t.reshape(B * N, H, Dh)[flat].unsqueeze(0)  # [1, sum(len), H, Dh]
    bias = BlockDiagonalMask.from_seqlens(lengths)
    packed = xops.memory_efficient_attention(pack(q), pack(k), pack(v), attn_bias=bias)[0]
    out = q.new_zeros(B * N, H, Dh)
    out[flat] = packed
    return out.reshape(B, N, H, Dh).transpose(1, 2)


_KERNELS = {"math": math_attention, "sdpa": sdpa_attention, "xformers": xformers_attention}


class Attention(nn.Module):
    """timm-compatible parameter names (`qkv`, `proj`) so state dicts load into timm's ViT."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend = resolve_backend(backend)
        self._kernel = _KERNELS[self.backend]

    def forward(self, x: Tensor, valid: Tensor | None = None, rope=None) -> Tensor:
        """x [B, N, C]; valid [B, N] real tokens; rope: a `usjepa.models.rope.Rope` rotating q and k (or None)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        kernel = self._kernel
        if kernel is xformers_attention and not x.is_cuda:
            kernel = sdpa_attention  # a module moved back to CPU keeps working
        out = kernel(q, k, v, valid)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))
