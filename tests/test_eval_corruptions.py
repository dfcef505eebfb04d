import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from usjepa.eval.corruptions import apply_corruption


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


def test_speckle_is_seeded_per_item_grows_with_severity_and_stays_in_the_region():
    img, region = _fan_batch(b=4)
    idx = torch.tensor([10, 11, 12, 13])
    a = apply_corruption(img, region, "speckle", 2, idx, seed=1)
    # the same item gets the same noise whatever batch it travels in
    b = apply_corruption(img[2:], region[2:], "speckle", 2, idx[2:], seed=1)
    torch.testing.assert_close(a[2:], b)
    assert not torch.equal(a, apply_corruption(img, region, "speckle", 2, idx, seed=2))
    assert torch.equal(a[~region.unsqueeze(1)], img[~region.unsqueeze(1)])
    dev = [(apply_corruption(img, region, "speckle", s, idx) - img).abs().mean().item() for s in (1, 2, 3)]
    assert dev[0] < dev[1] < dev[2]
    assert a.min() >= 0 and a.max() <= 1


def test_bad_arguments_are_explained():
    img, region = _fan_batch(b=1)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        apply_corruption(img, region, "fog", 1)
    with pytest.raises(ValueError, match="severity must be 1, 2 or 3"):
        apply_corruption(img, region, "blur", 4)
