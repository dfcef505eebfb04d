import numpy as np
import pytest
import torch

from tests import xformers_reference as xref
from tests.host_sync import HostSyncError, no_host_sync
from usjepa.models import attention as A
from usjepa.models.layout import Segment, TokenLayout


def _qkv(B=2, H=3, N=11, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g) for _ in range(3)]


def test_sdpa_matches_math_without_padding():
    q, k, v = _qkv()
    torch.testing.assert_close(A.sdpa_attention(q, k, v), A.math_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_sdpa_matches_math_with_padding_and_padding_is_ignored():
    q, k, v = _qkv()
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[0, 7:] = False
    valid[1, 3:] = False
    layout = TokenLayout.from_valid(valid)
    out_s = A.sdpa_attention(q, k, v, layout)
    torch.testing.assert_close(out_s, A.math_attention(q, k, v, layout), atol=1e-5, rtol=1e-5)
    # the real tokens' outputs equal attention over the unpadded sequence alone
    ref = A.math_attention(q[:1, :, :7], k[:1, :, :7], v[:1, :, :7])
    torch.testing.assert_close(out_s[:1, :, :7], ref, atol=1e-5, rtol=1e-5)
    # changing padded keys/values changes nothing for real tokens
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 7:] += 100
    v2[0, :, 7:] -= 50
    torch.testing.assert_close(A.sdpa_attention(q, k2, v2, layout)[0, :, :7], out_s[0, :, :7])


def test_backend_resolution_and_env_override(monkeypatch):
    assert A.resolve_backend("math") == "math"
    assert A.resolve_backend("sdpa") == "sdpa"
    monkeypatch.setenv("USJEPA_ATTN", "math")
    assert A.resolve_backend("auto") == "math"
    monkeypatch.delenv("USJEPA_ATTN")
    expected = "xformers" if A._load_xformers() is not None else "sdpa"
    assert A.resolve_backend("auto") == expected
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.resolve_backend("flash9")


def test_attention_modules_agree_across_backends():
    torch.manual_seed(0)
    m_math = A.Attention(32, 4, backend="math")
    m_sdpa = A.Attention(32, 4, backend="sdpa")
    m_sdpa.load_state_dict(m_math.state_dict())
    x = torch.randn(3, 9, 32)
    valid = torch.rand(3, 9) > 0.3
    valid[:, 0] = True
    layout = TokenLayout.from_valid(valid)
    torch.testing.assert_close(m_sdpa(x, layout), m_math(x, layout), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="TokenLayout.from_valid"):
        m_sdpa(x, valid)  # a bare mask is refused, with the way to build a layout


# ----------------------------------------------------------------------------- layouts and xformers packing


def _two_segment_layout():
    """Predictor-like rows: [context (6 slots) | targets (5 slots)], each padded at its own end, so the padding
    sits in the middle of a row as well as at its end."""
    ctx_len, tgt_len = np.array([6, 4, 2]), np.array([5, 1, 3])
    ctx = torch.arange(6)[None] < torch.from_numpy(ctx_len)[:, None]
    tgt = torch.arange(5)[None] < torch.from_numpy(tgt_len)[:, None]
    layout = TokenLayout.from_segments([Segment(6, ctx, ctx_len), Segment(5, tgt, tgt_len)], 3, "cpu")
    return layout, torch.cat([ctx, tgt], dim=1)


def test_layout_from_host_lengths():
    layout, valid = _two_segment_layout()
    assert layout.seqlens == [11, 5, 5] and torch.equal(layout.valid, valid)
    torch.testing.assert_close(layout.pack_index(), valid.reshape(-1).nonzero().squeeze(1))
    # lengths that fill every slot give the dense layout (no mask at all), whatever the masks say
    full = Segment(4, torch.ones(2, 4, dtype=torch.bool), np.array([4, 4]))
    assert TokenLayout.from_segments([Segment(1), full], 2, "cpu").dense
    with pytest.raises(ValueError, match="host lengths"):
        Segment(4, torch.ones(2, 4, dtype=torch.bool, device="meta"))  # a device mask without its counts
    with pytest.raises(ValueError, match="3 lengths for 2 sequences"):
        TokenLayout.from_segments([Segment(4, torch.ones(3, 4, dtype=torch.bool), np.array([4, 4, 3]))], 2, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_xformers_packing_matches_math_and_sdpa_forward_and_backward(monkeypatch, dtype):
    """Our packing (index gather -> block-diagonal kernel -> index scatter) against the padded math / SDPA paths,
    on a CPU reference of the xformers kernel: outputs at real tokens and every gradient agree."""
    xref.install(monkeypatch)
    layout, valid = _two_segment_layout()
    outs, grads = {}, {}
    for name, kernel in A._KERNELS.items():
        q, k, v = (t.to(dtype).requires_grad_() for t in _qkv(B=3, H=2, N=11, D=8))
        out = kernel(q, k, v, layout)  # [B, H, N, Dh]
        w = torch.linspace(-1, 1, out[0].numel(), dtype=dtype).reshape(out[0].shape)
        (out * w * valid[:, None, :, None]).sum().backward()  # the loss reads real tokens only
        outs[name] = out.detach() * valid[:, None, :, None]
        grads[name] = [t.grad for t in (q, k, v)]
    assert xref.calls == [[11, 5, 5]]  # the packed path ran, once, with the host lengths
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    for name in ("sdpa", "xformers"):
        torch.testing.assert_close(outs[name], outs["math"], **tol)
        for g, g_ref in zip(grads[name], grads["math"]):
            torch.testing.assert_close(g, g_ref, **tol)
    assert not outs["xformers"][~valid[:, None, :, None].expand_as(outs["xformers"])].any()  # padding stays 0
    q, k, v = (t.to(dtype) for t in _qkv(B=3, H=2, N=11, D=8))
    torch.testing.assert_close(A.xformers_attention(q, k, v, TokenLayout()), A.math_attention(q, k, v), **tol)
    assert xref.calls[-1] is None  # a dense layout calls the kernel without a bias


def test_attention_kernels_read_nothing_back_to_the_host(monkeypatch):
    xref.install(monkeypatch)
    layout, _ = _two_segment_layout()
    meta = TokenLayout(layout.valid.to("meta"), layout.seqlens)
    q, k, v = (t.to("meta").requires_grad_() for t in _qkv(B=3, H=2, N=11, D=8))
    with no_host_sync():
        for kernel in A._KERNELS.values():
            kernel(q, k, v, meta).sum().backward()
    # the guard catches what the pre-layout xformers path did in every layer
    valid = layout.valid.to("meta")
    for sync in (lambda: bool(valid.all()), lambda: valid.sum(1).tolist(), lambda: q.reshape(-1, 8)[valid.flatten()],
                 lambda: valid.cpu()):
        with pytest.raises((HostSyncError, NotImplementedError, RuntimeError)), no_host_sync():
            sync()
    with pytest.raises(HostSyncError, match="boolean index"), no_host_sync():
        torch.zeros(4)[torch.tensor([True, False, True, False])] = 1.0  # an index_put with a mask, even on CPU


# ----------------------------------------------------------------------------- 2-D RoPE


def _rope_reference(x, rows, cols):
    """The rule, with complex numbers: pair i of the first half turns by row * w_i, of the second half by
    col * w_i, w_i = 10000^(-i / (Dh / 4)). x [B, H, N, Dh]; rows / cols [N] integer positions."""
    dh = x.shape[-1]
    nf = dh // 4
    w = 10000.0 ** (-torch.arange(nf, dtype=torch.float64) / nf)
    ang = torch.cat([rows[:, None].double() * w, cols[:, None].double() * w], dim=1)  # [N, Dh / 2]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], dh // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape).float()


def test_rope_attention_equals_attention_on_tokens_rotated_by_the_rule():
    from usjepa.models.rope import RopeTables

    torch.manual_seed(0)
    attn = A.Attention(32, 2, backend="math").eval()  # head dim 16: 4 frequencies per axis
    grid = (3, 5)
    pos = torch.tensor([[0, 4, 7, 14, 9], [2, 3, 10, 11, 13]])  # a context subset per sample
    x = torch.randn(2, 5, 32)
    out = attn(x, rope=RopeTables(16).at(grid, pos, "cpu"))
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    qr = torch.stack([_rope_reference(q[b:b + 1], pos[b] // 5, pos[b] % 5) for b in range(2)]).squeeze(1)
    kr = torch.stack([_rope_reference(k[b:b + 1], pos[b] // 5, pos[b] % 5) for b in range(2)]).squeeze(1)
    ref = attn.proj(A.math_attention(qr, kr, v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_positions():
    from usjepa.models.rope import RopeTables

    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 2, 24), torch.randn(1, 1, 2, 24)
    tabs = RopeTables(24)

    def score(a, b):  # token a queries token b, at grid indices a, b of a 9 x 9 grid
        r = tabs.at((9, 9), torch.tensor([[a, b]]), "cpu")
        qr, kr = r.apply(q), r.apply(k)
        return float(qr[0, 0, 0] @ kr[0, 0, 1])

    # (1, 2) -> (3, 7) and (4, 0) -> (6, 5): the same offset (2, 5) gives the same score; another offset does not
    assert score(1 * 9 + 2, 3 * 9 + 7) == pytest.approx(score(4 * 9 + 0, 6 * 9 + 5), abs=1e-4)
    assert score(1 * 9 + 2, 3 * 9 + 7) != pytest.approx(score(1 * 9 + 2, 7 * 9 + 3), abs=1e-3)
    # a CLS prefix is not rotated
    r = tabs.at((9, 9), torch.tensor([[5]]), "cpu", prefix=1)
    both = torch.randn(1, 1, 2, 24)
    assert torch.equal(r.apply(both)[:, :, :1], both[:, :, :1])


def test_mask_batches_carry_host_lengths_that_match_their_masks():
    from usjepa.masks import MaskBatch, collate_masks

    per_sample = [[(np.array([0, 1, 2]), [np.array([5, 6]), np.array([7])])],
                  [(np.array([3, 4]), [np.array([8, 9]), np.array([10, 11])])]]
    (m,) = collate_masks(per_sample)
    assert m.context_lengths.tolist() == [3, 2] and m.targets_lengths.tolist() == [[2, 1], [2, 2]]
    for moved in (m.to("meta"), m.pin_memory() if torch.cuda.is_available() else m.to("cpu")):
        assert moved.context_lengths.tolist() == [3, 2] and moved.targets_lengths.tolist() == [[2, 1], [2, 2]]
    (full,) = collate_masks([[(np.array([0, 1]), [np.array([5])])]] * 2)
    assert full.context_valid is None and full.context_lengths is None  # nothing padded: the dense kernel runs
    with pytest.raises(ValueError, match="disagree"):
        MaskBatch(m.context, m.context_valid, m.targets, m.targets_valid, np.array([3, 3]), m.targets_lengths)
    with pytest.raises(ValueError, match="needs context_lengths"):
        MaskBatch(m.context.to("meta"), m.context_valid.to("meta"), m.targets, None)
