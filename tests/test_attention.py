import pytest
import torch

from usjepa.models import attention as A


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
    out_s = A.sdpa_attention(q, k, v, valid)
    torch.testing.assert_close(out_s, A.math_attention(q, k, v, valid), atol=1e-5, rtol=1e-5)
    # the real tokens' outputs equal attention over the unpadded sequence alone
    ref = A.math_attention(q[:1, :, :7], k[:1, :, :7], v[:1, :, :7])
    torch.testing.assert_close(out_s[:1, :, :7], ref, atol=1e-5, rtol=1e-5)
    # changing padded keys/values changes nothing for real tokens
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 7:] += 100
    v2[0, :, 7:] -= 50
    torch.testing.assert_close(A.sdpa_attention(q, k2, v2, valid)[0, :, :7], out_s[0, :, :7])


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
    torch.testing.assert_close(m_sdpa(x, valid), m_math(x, valid), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers kernels need CUDA")
def test_xformers_matches_sdpa_on_cuda_with_padding():
    if A._load_xformers() is None:
        pytest.skip("xformers not importable on this CUDA setup")
    q, k, v = (t.cuda() for t in _qkv(N=64, D=32))
    valid = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    valid[1, 40:] = False
    out_x = A.xformers_attention(q, k, v, valid)
    out_s = A.sdpa_attention(q, k, v, valid)
    torch.testing.assert_close(out_x[0], out_s[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out_x[1, :, :40], out_s[1, :, :40], atol=2e-3, rtol=2e-3)


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
