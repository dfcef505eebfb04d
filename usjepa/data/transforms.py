"""Seedable geometric and photometric transforms for B-mode frames (numpy in, numpy out; randomness only from `rng`).

Geometry (fan-constrained random resized crop, flips, pad / squash resize) moves the image and its region mask
together; photometric ops (gain, contrast, gamma, blur, correlated speckle, noise) act inside the region only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from usjepa.data.preprocess import region_bbox

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, PIL convention


def _planes(img: np.ndarray) -> list[np.ndarray]:
    return [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]


def _stack(planes: list[np.ndarray]) -> np.ndarray:
    return planes[0] if len(planes) == 1 else np.stack(planes, axis=2)


def crop_resize(img: np.ndarray, region: np.ndarray, box: Box, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop `box` and resize to size (H, W): bilinear (antialiased) image, nearest region."""
    h, w = size
    out = [np.array(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F")
                      .resize((w, h), Image.BILINEAR, box=box)) for p in _planes(img)]
    reg = np.array(Image.fromarray(region.astype(np.uint8)).resize((w, h), Image.NEAREST, box=box), dtype=bool)
    return _stack(out), reg


def letterbox(img: np.ndarray, region: np.ndarray | None, size: tuple[int, int], mode: str, resize, dtype
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole frame at size (H, W) through `resize(img, region, box, size)`: aspect kept and zero-padded
    ('pad') or stretched ('squash'). The one geometry of `resize_full` and of prepared shards' uint8 frames."""
    h, w = img.shape[:2]
    if mode == "squash":
        return resize(img, region, (0, 0, w, h), size)
    if mode != "pad":
        raise ValueError(f"data.resize must be 'pad' or 'squash', got '{mode}'")
    oh, ow = size
    s = min(oh / h, ow / w)
    nh, nw = max(1, min(oh, round(h * s))), max(1, min(ow, round(w * s)))
    im, reg = resize(img, region, (0, 0, w, h), (nh, nw))
    top, left = (oh - nh) // 2, (ow - nw) // 2
    out = np.zeros((oh, ow) + img.shape[2:], dtype)
    out[top:top + nh, left:left + nw] = im
    if reg is None:
        return out, None
    r = np.zeros((oh, ow), bool)
    r[top:top + nh, left:left + nw] = reg
    return out, r


def resize_full(img: np.ndarray, region: np.ndarray, size: tuple[int, int], mode: str = "pad"
                ) -> tuple[np.ndarray, np.ndarray]:
    """The whole frame at size (H, W): aspect kept and zero-padded ('pad') or stretched ('squash')."""
    return letterbox(img, region, size, mode, crop_resize, np.float32)


def sample_crop(rng: np.random.Generator, region: np.ndarray, scale: tuple[float, float] = (0.6, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), out_aspect: float = 1.0, min_cover: float = 0.5,
                tries: int = 10) -> Box:
    """A random-resized-crop box inside the region's bounding box, covering >= min_cover region pixels."""
    t, b, left, r = region_bbox(region)
    bh, bw = b - t, r - left
    area = bh * bw
    integral = None
    for _ in range(tries):
        s = rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))) * out_aspect  # width / height
        cw, ch = math.sqrt(s * area * ar), math.sqrt(s * area / ar)
        if cw > bw or ch > bh:
            continue
        x0, y0 = left + rng.uniform(0, bw - cw), t + rng.uniform(0, bh - ch)
        if min_cover > 0:
            if integral is None:  # coverage is a share: a 4x-subsampled integral image is exact enough and 16x cheaper
                sub = 4 if min(region.shape) >= 128 else 1
                integral = np.pad(region[::sub, ::sub].astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            ya, yb = int(y0) // sub, max(int(y0) // sub + 1, int(y0 + ch) // sub)
            xa, xb = int(x0) // sub, max(int(x0) // sub + 1, int(x0 + cw) // sub)
            cover = integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]
            if cover < min_cover * (yb - ya) * (xb - xa):
                continue
        return x0, y0, x0 + cw, y0 + ch
    return float(left), float(t), float(r), float(b)


# ----------------------------------------------------------------------------- photometric ops


def _region_mean(img: np.ndarray, region: np.ndarray) -> float:
    return float(img[region].mean()) if region.any() else float(img.mean())


def gain(img, region, rng, m):  # brightness
    return img * rng.uniform(1 - 0.3 * m, 1 + 0.3 * m)


def contrast(img, region, rng, m):
    mu = _region_mean(img, region)
    return (img - mu) * rng.uniform(1 - 0.4 * m, 1 + 0.4 * m) + mu


def gamma(img, region, rng, m):
    return np.clip(img, 0, 1) ** math.exp(rng.uniform(-0.4 * m, 0.4 * m))


def blur(img, region, rng, m):
    s = rng.uniform(0.2, 0.2 + 1.8 * m)
    return ndi.gaussian_filter(img, (s, s) + (0,) * (img.ndim - 2))


def sharpen(img, region, rng, m):
    s = ndi.gaussian_filter(img, (1.0, 1.0) + (0,) * (img.ndim - 2))
    return img + rng.uniform(0, 1.5 * m) * (img - s)


def speckle(img, region, rng, m):
    """Correlated speckle-like noise (additive in the log-compressed domain, i.e. multiplicative on the echo)."""
    n = rng.standard_normal(img.shape[:2], dtype=np.float32)
    c = rng.uniform(0.6, 1.5)
    n = ndi.gaussian_filter(n, (c * 0.6, c))  # speckle is wider laterally than axially
    n /= max(float(n.std()), 1e-6)
    n = n if img.ndim == 2 else n[..., None]
    return img + rng.uniform(0.02, 0.02 + 0.12 * m) * n


def noise(img, region, rng, m):
    return img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.005, 0.005 + 0.06 * m)


def identity(img, region, rng, m):
    return img


TRIVIAL_OPS = (identity, gain, contrast, gamma, blur, sharpen, speckle, noise)


def photometric(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, policy: str = "default"
                ) -> np.ndarray:
    """'default': jitter gain/contrast/gamma (p=0.8), blur (p=0.3), speckle (p=0.3); 'usjepa': the paper's list
    only, contrast (p=0.8), blur (p=0.3), speckle (p=0.3) (it gives no parameters: ours); 'trivial': one op of
    TRIVIAL_OPS with a uniform magnitude (TrivialAugment); 'none': nothing. Clipped to [0, 1], zero outside region."""
    if policy == "none":
        return img
    if policy == "trivial":
        op = TRIVIAL_OPS[int(rng.integers(len(TRIVIAL_OPS)))]
        out = op(img, region, rng, rng.uniform(0, 1))
    elif policy in ("default", "usjepa"):
        out = img
        if rng.random() < 0.8:
            if policy == "default":
                out = gamma(contrast(gain(out, region, rng, 0.5), region, rng, 0.5), region, rng, 0.5)
            else:
                out = contrast(out, region, rng, 0.5)
        if rng.random() < 0.3:
            out = blur(out, region, rng, 0.5)
        if rng.random() < 0.3:
            out = speckle(out, region, rng, 0.5)
    else:
        raise ValueError(f"data.augment_policy must be 'default', 'usjepa', 'trivial' or 'none', got '{policy}'")
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return np.where(region if out.ndim == 2 else region[..., None], out, 0.0).astype(np.float32) \
        if not region.all() else out


def augment_geometry(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, size: tuple[int, int],
                     scale: tuple[float, float], hflip: float = 0.5, vflip: float = 0.0,
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[np.ndarray, np.ndarray]:
    """Fan-constrained random resized crop to size (H, W) (aspect `ratio`, width / height), then flips."""
    box = sample_crop(rng, region, tuple(scale), tuple(ratio), out_aspect=size[1] / size[0])
    img, region = crop_resize(img, region, box, size)
    if rng.random() < hflip:
        img, region = img[:, ::-1], region[:, ::-1]
    if rng.random() < vflip:
        img, region = img[::-1], region[::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(region)
