import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from usjepa.eval.corruptions import apply_corruption, gaussian_kernel1d, speckle_kernel


def _fan_batch(b=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 1, h, w, generator=g) * 0.6 + 0.2
    region = torch.zeros(b, h, w, dtype=torch.bool)
    region[:, 5:35, 6:42] = True
    img[~region.unsqueeze(1).expand_as(img)] = 0.0  # black outside the fan
    return img, region


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_blur_matches_scipy_gaussian_with_the_paper_kernel(severity):
    img, region = _fan_batch()
    out = apply_corruption(img, region, "blur", severity)
    # kernel 2*floor(2*sev)+1 == radius 2*sev == scipy truncate 2; torch 'reflect' == scipy 'mirror'
    ref = np.stack([gaussian_filter(x[0].numpy().astype(np.float64), sigma=severity, truncate=2.0, mode="mirror")
                    for x in img])
    np.testing.assert_allclose(out[:, 0].numpy(), ref, atol=1e-5)


def test_contrast_keeps_the_in_region_median_scales_spread_and_leaves_background():
    img, region = _fan_batch()
    for sev, alpha in ((1, 0.7), (2, 0.5), (3, 0.3)):
        out = apply_corruption(img, region, "contrast", sev)
        for i in range(img.shape[0]):
            inside, inside_out = img[i, 0][region[i]], out[i, 0][region[i]]
            med = inside.median()
            torch.testing.assert_close(inside_out, med + alpha * (inside - med))
            assert torch.equal(out[i, 0][~region[i]], img[i, 0][~region[i]])


def test_speckle_is_seeded_per_item_coarsens_with_severity_and_stays_in_the_region():
    img, region = _fan_batch(b=4)
    idx = torch.tensor([10, 11, 12, 13])
    a = apply_corruption(img, region, "speckle", 2, idx, seed=1)
    # the same item gets the same noise whatever batch it travels in
    b = apply_corruption(img[2:], region[2:], "speckle", 2, idx[2:], seed=1)
    torch.testing.assert_close(a[2:], b)
    assert not torch.equal(a, apply_corruption(img, region, "speckle", 2, idx, seed=2))
    assert torch.equal(a[~region.unsqueeze(1)], img[~region.unsqueeze(1)])
    # severity widens the speckle grain (the smoothing kernel grows); its amplitude stays near 0.2 by the formula
    lag = []
    for s in (1, 2, 3):
        eta = apply_corruption(img, region, "speckle", s, idx) / img.clamp_min(1e-6) - 1
        e = eta[:, :, 8:30, 10:38]
        lag.append(float((e[..., :, 2:] * e[..., :, :-2]).mean() / e.var()))
    assert lag[0] < lag[1] < lag[2]
    assert a.min() >= 0 and a.max() <= 1


def test_bad_arguments_are_explained():
    img, region = _fan_batch(b=1)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        apply_corruption(img, region, "fog", 1)
    with pytest.raises(ValueError, match="severity must be 1, 2 or 3"):
        apply_corruption(img, region, "blur", 4)


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_speckle_follows_the_formula_noise_first_then_the_stated_kernel(severity):
    """eta ~ N(0, (0.35 s)^2) smoothed by K, not rescaled: std(eta * K) = 0.35 s ||k||^2 for a separable k."""
    h = w = 96
    img = torch.full((4, 1, h, w), 0.3)
    region = torch.ones(4, h, w, dtype=torch.bool)
    out = apply_corruption(img, region, "speckle", severity, torch.arange(4), seed=3)
    eta = (out / img - 1)[:, :, 8:-8, 8:-8]  # away from the padded border
    sigma, size = speckle_kernel(severity)
    k = gaussian_kernel1d(sigma, size, dtype=torch.float64)
    expected = 0.35 * severity * float((k ** 2).sum())
    assert float(eta.std()) == pytest.approx(expected, rel=0.06)
    assert float(eta.std()) < 0.35 * severity / 1.5  # the old rescaled noise was 1.6-5x stronger
    # correlated: neighbouring pixels share their noise as the kernel predicts (sum k_i k_i+1 / sum k_i^2)
    lag1 = float((eta[..., :, 1:] * eta[..., :, :-1]).mean() / eta.var())
    assert lag1 == pytest.approx(float((k[1:] * k[:-1]).sum() / (k ** 2).sum()), abs=0.05)
