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
