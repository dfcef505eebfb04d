"""A CPU reference of the two xformers calls usjepa makes, to test our packing on machines without CUDA.

`memory_efficient_attention(q, k, v, attn_bias)` on [B, M, H, Dh] inputs, where `attn_bias` is None (every token of
a row attends to its row) or a `BlockDiagonalMask` over one packed row (each block of `seqlens` tokens attends only
to itself), computed block by block with an explicit softmax: the semantics xformers documents, written
independently of `usjepa.models.attention`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class BlockDiagonalMask:
    def __init__(self, seqlens):
        self.seqlens = [int(n) for n in seqlens]

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
        assert kv_seqlen is None and not isinstance(q_seqlen, torch.Tensor), "host integers expected"
        return cls(q_seqlen)


def _softmax_attention(q, k, v):  # [B, M, H, Dh] each; at least float32 inside
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bmhd,bnhd->bhmn", q.to(acc), k.to(acc)) * q.shape[-1] ** -0.5
    return torch.einsum("bhmn,bnhd->bmhd", scores.softmax(-1), v.to(acc)).to(q.dtype)


def memory_efficient_attention(q, k, v, attn_bias=None):
    calls.append(None if attn_bias is None else list(attn_bias.seqlens))
    if attn_bias is None:
        return _softmax_attention(q, k, v)
    assert q.shape[0] == 1 and sum(attn_bias.seqlens) == q.shape[1], "a block-diagonal bias takes one packed row"
    outs, start = [], 0
    for n in attn_bias.seqlens:
        outs.append(_softmax_attention(q[:, start:start + n], k[:, start:start + n], v[:, start:start + n]))
        start += n
    return torch.cat(outs, dim=1)


calls: list = []  # the bias seqlens of every call (None: dense), for tests that check which path ran
xops = SimpleNamespace(memory_efficient_attention=memory_efficient_attention,
                       fmha=SimpleNamespace(attn_bias=SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)))


def install(monkeypatch, devices=("cpu", "meta")) -> SimpleNamespace:
    """Make usjepa's xformers backend use this reference on `devices`."""
    from usjepa.models import attention as A

    monkeypatch.setattr(A, "_xformers_ops", xops)
    monkeypatch.setattr(A, "XFORMERS_DEVICES", tuple(devices))
    calls.clear()
    return xops
