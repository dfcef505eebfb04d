"""Fan-aware preprocessing: scan-mask estimation, crop to the fan, overlay removal and inpainting, intensity rescale.

All functions take float32 images in [0, 1] ([H, W] gray or [H, W, 3]) and bool masks [H, W], and are vectorised.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_gray(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H, W] (ITU-R 601 luma); gray images pass through."""
    return img if img.ndim == 2 else img[..., :3] @ LUMA


def colour_marks(img: np.ndarray, min_saturation: float = 0.35, min_value: float = 0.25) -> np.ndarray:
    """Saturated coloured pixels (calipers, Doppler, annotations) of an RGB image -> bool [H, W]."""
    if img.ndim == 2:
        return np.zeros(img.shape, bool)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)  # faster than reducing axis 2
    return (mx > min_value) & ((mx - mn) > min_saturation * np.maximum(mx, 1e-6))


def _hull_vertices(comp: np.ndarray) -> np.ndarray | None:
    """Convex-hull vertices (x, y) [K, 2] of a bool mask's pixel centres; None when degenerate."""
    edge = comp & ~ndi.binary_erosion(comp)
    ys, xs = np.nonzero(edge)
    if len(ys) < 3:
        return None
    pts = np.stack([xs, ys], 1).astype(np.float64)
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # all points on a line
        return None


def _fill_polygon(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in vertices.tolist()], fill=1, outline=1)
    return np.asarray(canvas).astype(bool)


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """Background components that do not touch the border are holes (faster than iterated dilation)."""
    lab, n = ndi.label(~m)
    if n == 0:
        return m
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep = np.zeros(n + 1, bool)
    keep[border] = True
    keep[0] = True  # label 0 is the foreground itself
    return m | ~keep[lab]


def estimate_fan_mask(img: np.ndarray, threshold: float = 8 / 255, max_side: int = 256, hull: bool = True
                      ) -> np.ndarray:
    """Scan-region (fan) mask of a B-mode frame: smooth, threshold, open (drops text, rulers, traces), keep the largest
    component, fill holes, take the convex hull. Works at <= max_side pixels and is scaled back. -> bool [H, W]."""
    gray = to_gray(img)
    gray = np.where(colour_marks(img), 0.0, gray) if img.ndim == 3 else gray  # coloured traces are not tissue
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    small = gray if scale == 1.0 else np.asarray(
        Image.fromarray(gray.astype(np.float32), mode="F").resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                                   Image.BILINEAR))
    m = (small > threshold).view(np.uint8)
    k = 2 * max(1, round(min(small.shape) / 96)) + 1
    m = ndi.maximum_filter(ndi.minimum_filter(m, k), k).view(bool)  # opening with a k x k square (separable, fast)
    lab, n = ndi.label(m)
    if n == 0:
        return np.ones((h, w), bool)  # nothing stands out: treat the whole frame as signal
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return component_region(lab == int(sizes.argmax()), scale, (h, w), hull)


def component_region(comp: np.ndarray, scale: float, shape: tuple[int, int], hull: bool = True) -> np.ndarray:
    """A scan region found as one component on a copy scaled by `scale` -> bool mask of `shape` (full resolution):
    holes filled, convex hull drawn at full resolution, the concave top arc of curvilinear probes kept open."""
    h, w = shape
    comp = _fill_holes(comp)
    verts = _hull_vertices(comp) if hull else None
    if verts is not None:  # draw the hull at full resolution: exact edges even when estimated on a smaller copy
        full = _fill_polygon((verts + 0.5) / scale - 0.5, (h, w))
        # the hull bridges the concave top arc of curvilinear probes: keep it only below the first tissue row
        cols = np.nonzero(comp.any(0))[0]
        top = comp[:, cols].argmax(0)
        x_full = np.arange(w)
        top_full = np.interp(x_full, (cols + 0.5) / scale - 0.5, (top + 0.5) / scale - 0.5)
        return full & (np.arange(h)[:, None] >= np.floor(top_full[None, :] + 0.5 - 0.5 / scale))
    if scale != 1.0:
        comp = np.asarray(Image.fromarray(comp.astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(bool)
    return comp


def region_bbox(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) (exclusive ends) of a mask's True pixels; the whole image when empty."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(rows):
        return 0, mask.shape[0], 0, mask.shape[1]
    h, w = mask.shape
    return (max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad),
            max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad))


def inpaint(gray: np.ndarray, holes: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Fill `holes` from their surroundings by normalised Gaussian convolution (widening until every hole is filled)."""
    if not holes.any():
        return gray
    out = gray.copy()
    valid = (~holes).astype(np.float32)
    todo = holes.copy()
    s = sigma
    while todo.any() and s <= 64:
        num = ndi.gaussian_filter(gray * valid, s)
        den = ndi.gaussian_filter(valid, s)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok]
        todo &= ~ok
        s *= 2
    return out


def remove_overlays(img: np.ndarray, region: np.ndarray | None, max_marks: float = 0.05) -> np.ndarray:
    """Zero everything outside the region (burned-in text, rulers, ECG) and inpaint saturated colour marks inside
    it when they cover less than `max_marks` of the image (larger coloured areas are kept: likely Doppler).
    Returns gray float32 [H, W]."""
    gray = to_gray(img)
    if img.ndim == 3:
        marks = colour_marks(img)
        if marks.any() and marks.mean() < max_marks:
            gray = inpaint(gray, ndi.binary_dilation(marks))
    if region is not None:
        gray = np.where(region, gray, 0.0).astype(np.float32)
    return gray


def percentile_rescale(gray: np.ndarray, region: np.ndarray | None, lo: float = 2.0, hi: float = 98.0,
                       keep_outside: bool = False) -> np.ndarray:
    """Map the lo-th..hi-th percentiles of the pixels inside the region to 0..1 (clipped); outside the region
    becomes 0, or (keep_outside: plain US-JEPA keeps the whole frame) goes through the same mapping."""
    vals = gray[region] if region is not None and region.any() else gray.ravel()
    if vals.size > 65536:  # percentiles of a strided subsample are as good and much cheaper
        vals = vals[:: vals.size // 65536 + 1]
    a, b = np.percentile(vals, [lo, hi])
    out = np.clip((gray - a) / max(float(b - a), 1e-6), 0.0, 1.0).astype(np.float32)
    return np.where(region, out, 0.0).astype(np.float32) if region is not None and not keep_outside else out
