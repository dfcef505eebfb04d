"""Fan-mask estimation, overlay removal and intensity rescaling on dressed simulated frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from usjepa.data.preprocess import (
    colour_marks,
    estimate_fan_mask,
    inpaint,
    percentile_rescale,
    region_bbox,
    remove_overlays,
)
from usjepa.data.sim.simulate import simulate_frame


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("probe", ["curvilinear", "linear", "phased"])
@pytest.mark.parametrize("size", [(256, 256), (180, 300)])
def test_estimated_fan_matches_true_fan_on_dressed_frames(probe, size):
    for seed in range(3):
        f = simulate_frame(seed, size, probe=probe, dressed=True)
        assert f["overlay"][~f["mask"]].any()  # there is burned-in text / ruler outside the fan to get rid of
        est = estimate_fan_mask(f["image"].astype(np.float32) / 255)
        assert est.shape == size
        assert _iou(est, f["mask"]) > 0.95


def test_overlays_are_removed_and_colour_marks_inpainted():
    checked = 0
    for seed in range(6):
        f = simulate_frame(seed, 192, probe="phased", dressed=True)  # phased frames also carry an ECG trace
        img = f["image"].astype(np.float32) / 255
        mask = estimate_fan_mask(img)
        out = remove_overlays(img, mask)
        assert out.ndim == 2
        assert out[~mask].max() == 0.0  # text, ruler, ECG gone
        marks = f["overlay"] & f["mask"]
        if marks.any():
            assert colour_marks(img)[marks].mean() > 0.9
            clean = ndi.uniform_filter(f["clean"].astype(np.float32) / 255, 7)
            before = np.abs(img.max(2) - clean)[marks].mean()
            after = np.abs(out - clean)[marks].mean()
            assert after < 0.5 * before and after < 0.12, (before, after)
            checked += 1
    assert checked >= 2


def test_large_coloured_areas_are_not_inpainted():
    img = np.full((64, 64, 3), 0.4, np.float32)
    img[10:40, 10:40] = (0.9, 0.1, 0.1)  # a Doppler-like colour box: 22% of the image
    out = remove_overlays(img, None)
    assert np.allclose(out[20, 20], 0.299 * 0.9 + 0.587 * 0.1 + 0.114 * 0.1, atol=1e-5)


def test_inpaint_fills_holes_from_surroundings():
    y, x = np.mgrid[0:64, 0:64]
    img = (0.2 + 0.005 * x).astype(np.float32)
    holes = np.zeros((64, 64), bool)
    holes[30:34, 10:50] = True
    out = inpaint(np.where(holes, 1.0, img).astype(np.float32), holes)
    assert np.abs(out - img)[holes].max() < 0.02
    assert np.array_equal(out[~holes], img[~holes])


def test_percentile_rescale_inside_region_only():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.6, (100, 100)).astype(np.float32)
    region = np.zeros((100, 100), bool)
    region[20:80, 20:80] = True
    img[~region] = 0.95  # bright overlays outside must not set the scale
    out = percentile_rescale(img, region)
    inside = out[region]
    assert abs((inside >= 1.0).mean() - 0.02) < 0.01 and abs((inside <= 0.0).mean() - 0.02) < 0.01
    assert out[~region].max() == 0.0


def test_region_bbox_and_empty_masks():
    m = np.zeros((10, 12), bool)
    assert region_bbox(m) == (0, 10, 0, 12)
    m[2:5, 3:9] = True
    assert region_bbox(m) == (2, 5, 3, 9)
    assert estimate_fan_mask(np.zeros((32, 32), np.float32)).all()  # nothing to find: everything counts
