"""Test-time image corruptions of the US-JEPA robustness study (blur, contrast depletion, correlated speckle).

All act on float images in [0, 1], shape [B, C, H, W], with a bool region (fan) mask [B, H, W], and
return images in [0, 1]. Severity is 1, 2 or 3. Noise is drawn per item from `seed` and the item index,
so a corrupted test set is identical across runs, batch sizes and encoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from usjepa.eval.spec import CORRUPTIONS as CORRUPTION_KINDS

CONTRAST_ALPHA = {1: 0.7, 2: 0.5, 3: 0.3}


def gaussian_kernel1d(sigma: float, size: int, device=None, dtype=torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of odd `size`."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def separable_blur(x: Tensor, sigma: float, size: int) -> Tensor:
    """Gaussian blur of [B, C, H, W] with reflect padding (replicate where the image is smaller than the kernel)."""
    if sigma <= 0 or size <= 1:
        return x
    b, c, h, w = x.shape
    k = gaussian_kernel1d(sigma, size, x.device, x.dtype)
    pad = size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def gaussian_blur(images: Tensor, region: Tensor | None, severity: int, seeds: Tensor | None = None) -> Tensor:
    """Blur with sigma = severity and kernel size 2*floor(2*severity)+1 (pixels of the probed image)."""
    size = 2 * math.floor(2 * severity) + 1
    return separable_blur(images, float(severity), size).clamp(0, 1)


def _region(images: Tensor, region: Tensor | None) -> Tensor:
    if region is None:
        return torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
    return region.to(images.device).bool()


def contrast_depletion(images: Tensor, region: Tensor | None, severity: int, seeds: Tensor | None = None) -> Tensor:
    """I' = m + alpha (I - m), m the median brightness inside the region; alpha 0.7 / 0.5 / 0.3.

    Only pixels inside the region change: the black background outside the fan stays black.
    """
    alpha = CONTRAST_ALPHA[int(severity)]
    reg = _region(images, region)  # [B, H, W]
    out = images.clone()
    for i in range(images.shape[0]):
        inside = images[i][:, reg[i]]  # [C, P]
        if inside.numel() == 0:
            continue
        med = inside.mean(0).median()  # brightness = channel mean
        out[i][:, reg[i]] = med + alpha * (inside - med)
    return out.clamp(0, 1)


def speckle_kernel(severity: int) -> tuple[float, int]:
    """(sigma, size) of the Gaussian that correlates the speckle noise: sigma = 0.5 * severity px,
    size 2 * ceil(2 sigma) + 1. The paper says only that the kernel grows with severity; this one is ours."""
    sigma = 0.5 * severity
    return sigma, 2 * math.ceil(2 * sigma) + 1


def correlated_speckle(images: Tensor, region: Tensor | None, severity: int, seeds: Tensor | None = None) -> Tensor:
    """I' = I (1 + eta * K): eta ~ N(0, (0.35 severity)^2) per pixel, then smoothed by the kernel K of
    `speckle_kernel` (US-JEPA's formula as written: the smoothing lowers the noise's spread; nothing rescales it).

    The noise is shared across channels (one tissue, one speckle pattern); pixels outside the region are unchanged.
    """
    b, c, h, w = images.shape
    std = 0.35 * severity
    sm_sigma, size = speckle_kernel(severity)
    seeds = torch.arange(b) if seeds is None else seeds
    noise = torch.empty(b, 1, h, w)
    for i in range(b):
        g = torch.Generator().manual_seed(int(seeds[i]))
        noise[i] = torch.randn(1, h, w, generator=g) * std
    noise = separable_blur(noise, sm_sigma, size).to(images.device, images.dtype)
    reg = _region(images, region).unsqueeze(1)  # [B, 1, H, W]
    out = torch.where(reg, images * (1 + noise), images)
    return out.clamp(0, 1)


# name -> function, from the registry in usjepa.eval.spec (the one list of corruption names)
CORRUPTIONS = {name: CORRUPTION_KINDS.get(name) for name in CORRUPTION_KINDS}


def apply_corruption(images: Tensor, region: Tensor | None, name: str, severity: int,
                     item_index: Tensor | None = None, seed: int = 0) -> Tensor:
    """Corrupt a batch [B, C, H, W] in [0, 1]; `item_index` [B] keys the per-item noise (with `seed`)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{name}'; choose one of {', '.join(CORRUPTIONS)}")
    if int(severity) not in (1, 2, 3):
        raise ValueError(f"corruption severity must be 1, 2 or 3, got {severity}")
    idx = torch.arange(images.shape[0]) if item_index is None else item_index.cpu().long()
    seeds = idx + int(seed) * 1_000_003 + 7919 * int(severity)
    return CORRUPTIONS[name](images, region, int(severity), seeds)
