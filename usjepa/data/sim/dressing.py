"""Scanner dressing for simulated frames: burned-in text, a depth ruler, coloured calipers and an ECG trace.

Text, ruler and ECG sit outside the fan (as on real scanners); calipers are small saturated marks inside it. The
preprocessing (fan estimation, overlay removal, inpainting) is tested against these.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from usjepa.data.sim.bmode import Layout
from usjepa.data.sim.phantom import Probe

CALIPER_COLOURS = ((255, 255, 0), (0, 255, 0), (0, 255, 255), (255, 0, 255))


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _ecg(t: np.ndarray) -> np.ndarray:
    """A synthetic PQRST complex per unit of t (sum of Gaussian bumps)."""
    ph = t % 1.0
    waves = ((0.15, 0.025, 0.12), (0.28, 0.008, -0.15), (0.30, 0.01, 1.0), (0.32, 0.008, -0.25), (0.55, 0.04, 0.3))
    return sum(a * np.exp(-((ph - mu) ** 2) / (2 * s * s)) for mu, s, a in waves)


def dress(image: np.ndarray, mask: np.ndarray, probe: Probe, layout: Layout, rng: np.random.Generator,
          text: bool = True, ruler: bool = True, calipers: bool = True, ecg: bool | None = None,
          text_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add scanner overlays to a gray uint8 frame [H, W]. Returns (RGB uint8 [H, W, 3], overlay mask bool [H, W]).
    `text_seed` fixes the burned-in text (the same for every frame of one exam); otherwise it comes from `rng`."""
    h, w = image.shape
    outside = Image.new("L", (w, h), 0)  # gray overlays that must stay outside the fan
    draw = ImageDraw.Draw(outside)
    fs = max(7, h // 28)
    if text:
        trng = np.random.default_rng(text_seed) if text_seed is not None else rng
        lines_l = [f"{probe.kind[:1].upper()}{trng.integers(2, 12)}-{trng.integers(1, 5)}  {probe.f0_mhz:.1f}MHz",
                   f"D {probe.depth_mm / 10:.1f}cm", f"G {trng.integers(30, 80)}  DR {trng.integers(50, 61)}"]
        lines_r = [f"FR {trng.integers(12, 60)}Hz", f"MI {trng.uniform(0.5, 1.4):.1f}", f"{trng.integers(8, 23):02d}:"
                   f"{trng.integers(0, 60):02d}"]
        level = int(trng.integers(180, 256))
        for i, s in enumerate(lines_l):
            draw.text((2, 1 + i * (fs + 1)), s, fill=level, font=_font(fs))
        for i, s in enumerate(lines_r):
            draw.text((w - 2 - int(draw.textlength(s, font=_font(fs))), 1 + i * (fs + 1)), s, fill=level,
                      font=_font(fs))
    cols = np.nonzero(mask.any(0))[0]
    rows = np.nonzero(mask.any(1))[0]
    if ruler and len(cols):
        x = min(int(cols[-1]) + 4, w - 8)
        z_top = (0.0 - layout.z0) / layout.spacing
        draw.line([(x, int(z_top)), (x, int(rows[-1]))], fill=170)
        for k, depth in enumerate(np.arange(0, probe.depth_mm + 1e-6, 10.0)):
            y = int(round(z_top + depth / layout.spacing))
            draw.line([(x, y), (x + (6 if k % 5 == 0 else 3), y)], fill=200)
        yf = int(round(z_top + probe.focus_mm / layout.spacing))
        draw.polygon([(x - 2, yf), (x - 6, yf - 3), (x - 6, yf + 3)], fill=220)
    colour = Image.new("RGB", (w, h), 0)  # coloured overlays (ECG outside, calipers inside)
    cdraw = ImageDraw.Draw(colour)
    if ecg if ecg is not None else probe.kind == "phased":
        y0 = min(h - 4, int(rows[-1]) + max(4, (h - int(rows[-1])) // 2)) if len(rows) else h - 8
        t = np.linspace(0, rng.uniform(1.5, 3.0), w - 8) + rng.uniform(0, 1)
        ys = y0 - _ecg(t) * rng.uniform(4, 8)
        cdraw.line(list(zip(range(4, w - 4), ys.tolist(), strict=True)), fill=(0, 230, 0), width=1)
    overlay_out = np.asarray(outside)
    rgb_out = np.asarray(colour)
    grown = ndi.maximum_filter(mask.view(np.uint8), 5).view(bool)  # the fan grown by 2 px
    overlay_out = np.where(grown, 0, overlay_out)
    rgb_out = np.where(grown[..., None], 0, rgb_out)
    inside = Image.new("RGB", (w, h), 0)
    idraw = ImageDraw.Draw(inside)
    if calipers and rng.random() < 0.7:
        ys, xs = np.nonzero(ndi.minimum_filter(mask.view(np.uint8), 17))  # >= 8 px inside the fan
        if len(ys):
            col = CALIPER_COLOURS[int(rng.integers(len(CALIPER_COLOURS)))]
            arm = max(2, h // 80)
            pick = rng.choice(len(ys), size=2, replace=False) if len(ys) > 1 else np.array([0, 0])
            pts = [(int(xs[i]), int(ys[i])) for i in pick]
            for px, py in pts:
                idraw.line([(px - arm, py), (px + arm, py)], fill=col)
                idraw.line([(px, py - arm), (px, py + arm)], fill=col)
            n = int(np.hypot(pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]) // 4)
            for k in range(1, n):  # a dotted measurement line between the two calipers
                fx = pts[0][0] + (pts[1][0] - pts[0][0]) * k / n
                fy = pts[0][1] + (pts[1][1] - pts[0][1]) * k / n
                idraw.point((int(fx), int(fy)), fill=col)
    rgb_in = np.where(mask[..., None], np.asarray(inside), 0)
    rgb = np.repeat(image[..., None], 3, axis=2)
    gray_ov = overlay_out > 0
    rgb[gray_ov] = overlay_out[gray_ov, None]
    col_ov = (rgb_out.any(2)) | (rgb_in.any(2))
    rgb[col_ov] = np.maximum(rgb_out, rgb_in)[col_ov]
    return rgb, gray_ov | col_ov
