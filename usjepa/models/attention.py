"""Multi-head self-attention with one kernel chosen at construction: xformers, SDPA or an explicit math path.

The kernels are the targets of `ATTENTION_BACKENDS` (usjepa.models.spec); a layer resolves its name there.

`auto` picks xformers' memory-efficient attention on CUDA when it imports, else PyTorch's
`scaled_dot_product_attention`; `math` is a plain softmax(QK^T)V reference. The env var
USJEPA_ATTN (xformers|sdpa|math) overrides `auto`. Variable numbers of tokens per sample come as a
`TokenLayout` (usjepa.models.layout) built once per forward from host-side lengths: a dense layout runs
the unmasked kernel; otherwise SDPA/math use its key-padding mask and xformers packs the real tokens into
one block-diagonal batch. No kernel reads a device tensor back to the host.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usjepa.models.layout import TokenLayout, as_layout
from usjepa.models.spec import ATTENTION_BACKENDS

log = logging.getLogger(__name__)

AUTO = "auto"  # model.attn_backend / USJEPA_ATTN: the registered rule that picks a kernel
BACKENDS = tuple(n for n in ATTENTION_BACKENDS if not ATTENTION_BACKENDS.fact(n, "rule"))  # the kernels
XFORMERS_DEVICES = ("cuda",)  # where the xformers kernel runs; elsewhere its layers fall back to SDPA
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


def auto_backend() -> str:
    """`auto`: xformers where it runs (CUDA and a build matching this torch), else SDPA."""
    return "xformers" if _load_xformers() is not None else "sdpa"


def require_xformers() -> None:
    """RuntimeError when the xformers kernel cannot run here (asked for by name, not through `auto`)."""
    if _load_xformers() is None:
        raise RuntimeError(
            "attention backend 'xformers' was requested but xformers cannot run here (it needs CUDA and a build "
            "matching this torch); set model.attn_backend=sdpa or auto"
        )


def resolve_backend(requested: str = AUTO) -> str:
    """The backend a new attention layer will use (a name in ATTENTION_BACKENDS whose target is a kernel); `auto`
    is first replaced by USJEPA_ATTN when set. Logged once per distinct choice."""
    if requested == AUTO:
        requested = os.environ.get("USJEPA_ATTN", AUTO) or AUTO
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend '{requested}'; use one of {', '.join(ATTENTION_BACKENDS)}")
    choice = ATTENTION_BACKENDS.get(requested)() if ATTENTION_BACKENDS.fact(requested, "rule") else requested
    if ATTENTION_BACKENDS.fact(choice, "require"):
        ATTENTION_BACKENDS.get(choice, "require")()
    if choice not in _announced:
        _announced.add(choice)
        log.info("attention backend: %s", choice)
    return choice


def _mask(layout: TokenLayout | None) -> Tensor | None:
    return None if layout is None or layout.dense else layout.valid


def math_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout | None = None) -> Tensor:
    """Reference attention. q, k, v: [B, H, N, Dh]; layout: which keys are real (None or dense: all)."""
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)  # [B, H, N, N]
    valid = _mask(layout)
    if valid is not None:
        attn = attn.masked_fill(~valid[:, None, None, :], float("-inf"))
    attn = attn.to(torch.promote_types(attn.dtype, torch.float32)).softmax(dim=-1).to(q.dtype)  # >= fp32 softmax
    return attn @ v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout | None = None) -> Tensor:
    valid = _mask(layout)
    mask = None if valid is None else valid[:, None, None, :]  # [B, 1, 1, N] broadcast over heads and queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout | None = None) -> Tensor:
    """xformers memory-efficient attention; a padded batch is packed into one block-diagonal sequence by index
    (the layout's pack index and bias are made once per forward), padded slots come back as zeros."""
    xops = _load_xformers()
    B, H, N, Dh = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, H, Dh]
    if layout is None or layout.dense:
        return xops.memory_efficient_attention(q, k, v).transpose(1, 2)
    idx = layout.pack_index()  # [R] real slots of the flattened batch

    def pack(t: Tensor) -> Tensor:
        return t.reshape(B * N, H, Dh).index_select(0, idx).unsqueeze(0)  # [1, R, H, Dh]

    bias = layout.block_diagonal_bias(xops, q.device)
    packed = xops.memory_efficient_attention(pack(q), pack(k), pack(v), attn_bias=bias)[0]  # [R, H, Dh]
    out = q.new_zeros(B * N, H, Dh).index_copy(0, idx, packed.to(q.dtype))
    return out.reshape(B, N, H, Dh).transpose(1, 2)


_KERNELS = {name: ATTENTION_BACKENDS.get(name) for name in BACKENDS}  # the registered kernels (tests, benchmarks)


class Attention(nn.Module):
    """timm-compatible parameter names (`qkv`, `proj`) so state dicts load into timm's ViT."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = AUTO):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend = resolve_backend(backend)
        self._kernel = ATTENTION_BACKENDS.get(self.backend)

    def forward(self, x: Tensor, layout: TokenLayout | None = None, rope=None) -> Tensor:
        """x [B, N, C]; layout: which tokens are real (None: all); rope: a `usjepa.models.rope.Rope` rotating q and
        k (or None)."""
        layout = as_layout(layout)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        kernel = self._kernel
        if kernel is xformers_attention and x.device.type not in XFORMERS_DEVICES:
            kernel = sdpa_attention  # a module moved back to CPU keeps working
        out = kernel(q, k, v, layout)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))
