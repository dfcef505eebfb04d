"""Seedable transforms: fan-constrained crops, flips moving image and region together, photometric ops, resize."""

from __future__ import annotations

import numpy as np
import pytest

from usjepa.data.preprocess import region_bbox
from usjepa.data.sim.simulate import simulate_frame
from usjepa.data.transforms import TRIVIAL_OPS, augment_geometry, crop_resize, photometric, resize_full, sample_crop


@pytest.fixture(scope="module")
def frame():
    f = simulate_frame(0, (160, 200), probe="curvilinear")
    return f["image"].astype(np.float32) / 255, f["mask"]


def test_crops_stay_in_the_fan_and_cover_it(frame):
    _, mask = frame
    t, b, left, r = region_bbox(mask)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = sample_crop(rng, mask, (0.6, 1.0))
        assert left - 1e-6 <= x0 < x1 <= r + 1e-6 and t - 1e-6 <= y0 < y1 <= b + 1e-6
        assert (x1 - x0) * (y1 - y0) >= 0.6 * (b - t) * (r - left) * 0.999 or (x0, y0, x1, y1) == (left, t, r, b)
        assert mask[int(y0):int(y1), int(x0):int(x1)].mean() >= 0.5


def test_geometry_moves_image_and_region_together(frame):
    _, mask = frame
    img = mask.astype(np.float32)  # an image that *is* its region
    for seed in range(10):
        out, reg = augment_geometry(img, mask, np.random.default_rng(seed), (64, 64), (0.6, 1.0), hflip=0.5)
        assert out.shape == (64, 64) and reg.shape == (64, 64)
        assert ((out > 0.5) == reg).mean() > 0.97


def test_flip_is_a_mirror_of_the_same_crop(frame):
    img, mask = frame
    a, ra = augment_geometry(img, mask, np.random.default_rng(3), (48, 64), (0.6, 1.0), hflip=0.0)
    b, rb = augment_geometry(img, mask, np.random.default_rng(3), (48, 64), (0.6, 1.0), hflip=1.0)
    assert np.array_equal(a, b[:, ::-1]) and np.array_equal(ra, rb[:, ::-1])
    c, _ = augment_geometry(img, mask, np.random.default_rng(4), (48, 64), (0.6, 1.0), hflip=0.0)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("policy", ["default", "usjepa", "trivial"])
def test_photometric_stays_in_range_and_in_the_region(frame, policy):
    img, mask = frame
    changed = 0
    for seed in range(12):
        out = photometric(img, mask, np.random.default_rng(seed), policy)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert out[~mask].max() == 0.0
        assert np.array_equal(out, photometric(img, mask, np.random.default_rng(seed), policy))
        changed += not np.allclose(out, img)
    assert changed >= 6


def test_usjepa_policy_keeps_the_in_region_mean_and_none_changes_nothing(frame):
    """The paper's list (contrast around the mean, blur, speckle) shifts no brightness; gain / gamma would."""
    img, mask = frame
    shifts = [abs(float(photometric(img, mask, np.random.default_rng(s), "usjepa")[mask].mean() - img[mask].mean()))
              for s in range(12)]
    assert max(shifts) < 0.02
    assert np.array_equal(photometric(img, mask, np.random.default_rng(0), "none"), img)


def test_crop_aspect_follows_the_configured_ratio():
    region = np.ones((200, 200), bool)
    rng = np.random.default_rng(0)
    for ratio in ((0.75, 1.35), (1.0, 1.0)):
        for _ in range(40):
            x0, y0, x1, y1 = sample_crop(rng, region, (0.3, 1.0), ratio)
            assert ratio[0] - 1e-6 <= (x1 - x0) / (y1 - y0) <= ratio[1] + 1e-6


@pytest.mark.parametrize("op", TRIVIAL_OPS, ids=lambda f: f.__name__)
def test_each_trivial_op_keeps_the_picture(frame, op):
    img, mask = frame
    out = np.clip(op(img, mask, np.random.default_rng(0), 1.0), 0, 1)
    assert out.shape == img.shape
    assert np.corrcoef(out[mask], img[mask])[0, 1] > 0.5  # recognisably the same frame


def test_resize_pad_keeps_aspect_and_squash_fills():
    img = np.ones((40, 80), np.float32)
    reg = np.ones((40, 80), bool)
    out, r = resize_full(img, reg, (64, 64), "pad")
    rows = np.nonzero(out.any(1))[0]
    assert (rows[0], rows[-1]) == (16, 47) and np.array_equal(out > 0.5, r)
    out, r = resize_full(img, reg, (64, 64), "squash")
    assert out.min() > 0.99 and r.all()
    rgb, _ = crop_resize(np.ones((40, 80, 3), np.float32), reg, (0, 0, 80, 40), (20, 30))
    assert rgb.shape == (20, 30, 3)
