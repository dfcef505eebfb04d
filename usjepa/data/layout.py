"""Scanner-export layouts: the B-mode panes of a frame (one, side by side, 2 x 2...), each pane's scan region, the
burned-in parts beside them (banners, colour bars, grayscale ramps, markers) and colour Doppler inside them.

`detect_layout(img)` -> `FrameLayout`: panes in reading order, each with its box and region, and what was removed.
Images are float32 in [0, 1] ([H, W] or [H, W, 3]); boxes are (top, bottom, left, right) with exclusive ends and
masks bool [H, W], all in the source pixel grid. A pane's region is `pane_region` of the image cut to its box, so
a dataset that cuts the same box gets the same region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from usjepa.data.preprocess import colour_marks, component_region, estimate_fan_mask, inpaint, to_gray

Box = tuple[int, int, int, int]  # (top, bottom, left, right), exclusive ends

THRESHOLD = 8 / 255  # darker pixels are background (the black screen around the panes)
DETECT_SIDE = 256  # layouts and regions are found on copies at most this large
MIN_PANE_AREA = 0.02  # a pane covers at least this share of the frame...
REL_PANE_AREA = 0.25  # ...and of the largest pane (banners, bars and markers are much smaller)
PANE_ASPECT = (0.2, 3.0)  # width / height of a pane's box (bars are taller, banners and strips wider)
MIN_FILL = 0.3  # pane pixels / box pixels
MAX_FLAT = 0.5  # share of a pane's pixels within 4/255 of its median (speckle: 0.15-0.3; UI panels: > 0.7)
DOPPLER_SHARE = 0.01  # compact saturated pixels / region pixels above which a pane shows colour Doppler


@dataclass
class Pane:
    """One B-mode pane: its box, its scan region in the frame and its colour Doppler, if any."""

    box: Box
    region: np.ndarray  # bool [H, W] of the whole frame
    colour: str = ""  # "" | "colour-flow" | "power"
    colour_share: float = 0.0  # compact saturated pixels / region pixels


@dataclass
class FrameLayout:
    """The panes of a frame and what is not part of any pane."""

    shape: tuple[int, int]
    panes: list[Pane] = field(default_factory=list)
    removed: np.ndarray | None = None  # bool [H, W]: burned-in pixels outside every region (text, bars, markers)
    marks: np.ndarray | None = None  # bool [H, W]: small colour marks inside regions (calipers), inpainted later
    doppler: np.ndarray | None = None  # bool [H, W]: colour Doppler pixels inside regions

    @property
    def kind(self) -> str:
        """none | single | side-by-side | stacked | grid."""
        if len(self.panes) <= 1:
            return "single" if self.panes else "none"
        rows = reading_order([p.box for p in self.panes])
        return "side-by-side" if len(rows) == 1 else "stacked" if all(len(r) == 1 for r in rows) else "grid"

    @property
    def region(self) -> np.ndarray:
        """Union of the pane regions (the whole frame when no pane was found)."""
        if not self.panes:
            return np.ones(self.shape, bool)
        out = np.zeros(self.shape, bool)
        for p in self.panes:
            out |= p.region
        return out

    @property
    def colour(self) -> str:
        """The frame's Doppler kind: that of its first Doppler pane."""
        return next((p.colour for p in self.panes if p.colour), "")


# ----------------------------------------------------------------------------- signal


def signal(img: np.ndarray, gray: np.ndarray | None = None, sat: np.ndarray | None = None) -> np.ndarray:
    """Pixels brighter than the background, or coloured -> bool [H, W] (gray / saturated maps when computed)."""
    gray = to_gray(img) if gray is None else gray
    return (gray > THRESHOLD) | (colour_marks(img) if sat is None else sat)


def _pooled(sig: np.ndarray, max_side: int = DETECT_SIDE) -> tuple[np.ndarray, float]:
    """Box-average the binary signal down to <= max_side and keep majority pixels, then open it with a square of
    ~1% of the side: thin text, ticks, rulers and narrow bars vanish while gutters between panes stay open (a gutter
    wider than one pooled pixel keeps its zeros, which a blurred gray copy would bridge). -> (mask, scale)."""
    h, w = sig.shape
    scale = min(1.0, max_side / max(h, w))
    small = sig.view(np.uint8) if scale == 1.0 else np.asarray(
        Image.fromarray(sig.view(np.uint8) * np.uint8(255)).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)) > 127
    k = 2 * max(1, round(min(small.shape) / 96)) + 1
    m = ndi.maximum_filter(ndi.minimum_filter(small.view(np.uint8), k), k).view(bool)
    return m, scale


def _trim(region: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Cut off strips of a region beyond an empty full-resolution column (row) when they hold < 15% of its signal:
    a ramp or bar 1-2 px from the scan merges with it on the pooled copy, never at full resolution."""
    for axis in (0, 1):  # 0: columns, 1: rows
        occ = (sig & region).sum(axis)
        idx = np.nonzero(occ)[0]
        if len(idx) < 2:
            continue
        runs = np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1)
        main = max(runs, key=lambda run: occ[run].sum())
        if len(runs) == 1 or occ[main].sum() < 0.85 * occ.sum():
            continue
        keep = np.zeros(len(occ), bool)
        keep[main[0]:main[-1] + 1] = True
        region = region & (keep[None, :] if axis == 0 else keep[:, None])
    return region


def pane_region(img: np.ndarray, sig: np.ndarray | None = None) -> np.ndarray:
    """Scan region of an image holding one pane: the largest component of the pooled signal, holes filled, convex
    hull at full resolution (see preprocess.component_region), strips beyond an empty column or row cut off.
    Nothing stands out: the whole image. -> bool [H, W]."""
    sig = signal(img) if sig is None else sig
    small, scale = _pooled(sig)
    lab, n = ndi.label(small)
    if n == 0:
        return np.ones(img.shape[:2], bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return _trim(component_region(lab == int(sizes.argmax()), scale, img.shape[:2]), sig)


# ----------------------------------------------------------------------------- panes


def _textured(gray: np.ndarray, mask: np.ndarray) -> bool:
    """Speckle spreads its gray levels: a pane, not a flat panel with text (whose pixels sit at one level, even
    after JPEG). Blur and upscaling, which flatten neighbour differences, keep this spread."""
    v = gray[::2, ::2][mask[::2, ::2]]
    if not v.size:
        return False
    return float((np.abs(v - np.median(v)) <= 4 / 255).mean()) <= MAX_FLAT


def _is_pane(box: Box, mask: np.ndarray, gray: np.ndarray, frame_area: int) -> bool:
    """Size, shape, fill and texture of a candidate (mask: its pixels inside box, full resolution)."""
    t, b, lft, r = box
    h, w = b - t, r - lft
    area = int(mask.sum())
    return (area >= MIN_PANE_AREA * frame_area and PANE_ASPECT[0] <= w / max(h, 1) <= PANE_ASPECT[1]
            and area >= MIN_FILL * h * w and _textured(gray[t:b, lft:r], mask))


def _tight(mask: np.ndarray, box: Box) -> Box | None:
    t, b, lft, r = box
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(rows):
        return None
    return t + int(rows[0]), t + int(rows[-1]) + 1, lft + int(cols[0]), lft + int(cols[-1]) + 1


def _cut(box: Box, mask: np.ndarray, gray: np.ndarray, frame_area: int, depth: int = 0) -> list[Box]:
    """XY-cut: split a candidate at an empty column (row) run in its middle 60% when both sides are panes; panes
    whose scans nearly touch merge on the pooled copy but never share a full-resolution column."""
    if depth > 3:
        return [box]
    t, b, lft, r = box
    for axis in (0, 1):  # 0: split by columns (side by side), 1: by rows (stacked)
        occ = mask.sum(axis)  # [W] or [H]
        n = len(occ)
        lo, hi = int(0.2 * n), int(0.8 * n)
        empty = np.nonzero(occ[lo:hi] == 0)[0] + lo
        if not len(empty):
            continue
        runs = np.split(empty, np.nonzero(np.diff(empty) > 1)[0] + 1)
        at = min(runs, key=lambda run: abs(run.mean() - n / 2))
        c = int(at[len(at) // 2])
        parts = [(mask[:, :c], (t, b, lft, lft + c)), (mask[:, c:], (t, b, lft + c, r))] if axis == 0 else \
            [(mask[:c], (t, t + c, lft, r)), (mask[c:], (t + c, b, lft, r))]
        boxes = [_tight(m, bx) for m, bx in parts]
        if None in boxes:
            continue
        subs = [m[bx[0] - pb[0]:bx[1] - pb[0], bx[2] - pb[2]:bx[3] - pb[2]]
                for (m, pb), bx in zip(parts, boxes, strict=True)]
        if all(_is_pane(bx, m, gray, frame_area) for bx, m in zip(boxes, subs, strict=True)):
            return [p for bx, m in zip(boxes, subs, strict=True) for p in _cut(bx, m, gray, frame_area, depth + 1)]
    return [box]


def reading_order(boxes: list[Box]) -> list[list[Box]]:
    """Boxes grouped into rows (a box joins a row when its middle lies in the row's first box), rows top to bottom,
    boxes left to right."""
    rows: list[list[Box]] = []
    for bx in sorted(boxes):
        mid = (bx[0] + bx[1]) / 2
        row = next((r for r in rows if r[0][0] <= mid < r[0][1]), None)
        if row is None:
            rows.append([bx])
        else:
            row.append(bx)
    return [sorted(r, key=lambda bx: bx[2]) for r in rows]


def _separate(grown: list[Box], cores: list[Box]) -> list[Box]:
    """Shrink margin-grown boxes that overlap to the middle of the gap between their cores, along the axis on which
    the cores are furthest apart."""
    out = [list(b) for b in grown]
    for i in range(len(out)):
        for j in range(i + 1, len(out)):
            a, c = out[i], out[j]
            if a[0] >= c[1] or c[0] >= a[1] or a[2] >= c[3] or c[2] >= a[3]:
                continue
            gaps = []
            for s_, e in ((0, 1), (2, 3)):  # rows, columns
                first, second = (i, j) if cores[i][e] <= cores[j][s_] else (j, i)
                gaps.append((cores[second][s_] - cores[first][e], s_, e, first, second))
            gap, s_, e, first, second = max(gaps)
            if gap < 0:  # cores overlap on both axes: leave them
                continue
            mid = (cores[first][e] + cores[second][s_]) // 2
            out[first][e], out[second][s_] = min(out[first][e], mid), max(out[second][s_], mid)
    return [tuple(int(v) for v in b) for b in out]


def pane_boxes(img: np.ndarray, gray: np.ndarray | None = None, sig: np.ndarray | None = None) -> list[Box]:
    """Boxes of the B-mode panes of a frame in reading order (rows top to bottom, left to right); [] when none.
    Candidates are components of the pooled signal of pane size, shape, fill and speckle texture, split by XY-cut
    where panes touch; each box is grown by a small margin, never into a neighbour."""
    gray = to_gray(img) if gray is None else gray
    sig = signal(img, gray) if sig is None else sig
    h, w = sig.shape
    small, scale = _pooled(sig)
    lab, n = ndi.label(small)
    found: list[Box] = []
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        t, b = int(sl[0].start / scale), min(h, int(np.ceil(sl[0].stop / scale)))
        lft, r = int(sl[1].start / scale), min(w, int(np.ceil(sl[1].stop / scale)))
        comp = lab[sl] == i + 1
        if comp.sum() < MIN_PANE_AREA * small.size:
            continue
        up = np.asarray(Image.fromarray(comp.view(np.uint8)).resize((r - lft, b - t), Image.NEAREST)).view(bool)
        mask = sig[t:b, lft:r] & up
        box = _tight(mask, (t, b, lft, r))
        if box is None:
            continue
        mask = mask[box[0] - t:box[1] - t, box[2] - lft:box[3] - lft]
        if _is_pane(box, mask, gray, h * w):
            found.extend(_cut(box, mask, gray, h * w))
    if not found:
        return []
    areas = [(b - t) * (r - lft) for t, b, lft, r in found]
    found = [bx for bx, a in zip(found, areas, strict=True) if a >= REL_PANE_AREA * max(areas)]
    m = int(np.ceil(2 / scale)) + 2
    grown = [(max(0, t - m), min(h, b + m), max(0, lft - m), min(w, r + m)) for t, b, lft, r in found]
    return [bx for row in reading_order(_separate(grown, found)) for bx in row]


def regions_in(img: np.ndarray, boxes: list[Box], sig: np.ndarray | None = None) -> np.ndarray:
    """Union of the regions of the panes at `boxes` -> bool [H, W]."""
    sig = signal(img) if sig is None else sig
    out = np.zeros(img.shape[:2], bool)
    for t, b, lft, r in boxes:
        out[t:b, lft:r] |= pane_region(img[t:b, lft:r], sig[t:b, lft:r])
    return out


def estimate_region(img: np.ndarray) -> np.ndarray:
    """Scan region of a frame with any number of panes: the union of its panes' regions (a dual-pane frame keeps
    both panes); without a recognisable pane, the single-fan estimate of preprocess. -> bool [H, W]."""
    gray = to_gray(img)
    sig = signal(img, gray)
    boxes = pane_boxes(img, gray, sig)
    return regions_in(img, boxes, sig) if boxes else estimate_fan_mask(img)


# ----------------------------------------------------------------------------- colour


def doppler(img: np.ndarray, region: np.ndarray, sat: np.ndarray | None = None) -> tuple[str, float]:
    """Colour Doppler inside a region (of a pane cut to its box): compact saturated blobs (flow in a colour box), not
    thin marks (calipers, dotted lines, text). -> (kind "" | "colour-flow" | "power", blob pixels / region pixels)."""
    if img.ndim == 2:
        return "", 0.0
    sat = (colour_marks(img) if sat is None else sat) & region
    if not sat.any():
        return "", 0.0
    k = 2 * max(2, round(min(region.shape) / 160)) + 1  # >= 5 px: wider than mark strokes, even JPEG-smeared
    blobs = ndi.maximum_filter(ndi.minimum_filter(sat.view(np.uint8), k), k).view(bool) & sat
    share = float(blobs.sum() / max(1, region.sum()))
    if share < DOPPLER_SHARE:
        return "", share
    rgb = img[blobs]
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    blue = float((b > r).mean())
    warm = float(((r >= b) & (g >= 0.4 * r)).mean())  # orange / yellow: the power Doppler maps
    return ("power" if warm >= 0.5 and blue < 0.05 else "colour-flow"), share


def decolour(img: np.ndarray) -> np.ndarray:
    """Gray frame with every saturated pixel (Doppler, marks, colour bars) inpainted from its gray surroundings."""
    gray = to_gray(img)
    if img.ndim == 2:
        return gray
    sat = colour_marks(img)
    return inpaint(gray, ndi.binary_dilation(sat)) if sat.any() else gray


def detect_layout(img: np.ndarray, details: bool = True) -> FrameLayout:
    """Panes, their regions and Doppler, and (details) the removed parts and colour marks of one frame."""
    h, w = img.shape[:2]
    gray = to_gray(img)
    sat = colour_marks(img)
    sig = signal(img, gray, sat)
    out = FrameLayout((h, w))
    for box in pane_boxes(img, gray, sig):
        t, b, lft, r = box
        reg = pane_region(img[t:b, lft:r], sig[t:b, lft:r])
        kind, share = doppler(img[t:b, lft:r], reg, sat[t:b, lft:r])
        region = np.zeros((h, w), bool)
        region[t:b, lft:r] = reg
        out.panes.append(Pane(box, region, kind, share))
    if details:
        union = out.region
        out.removed = sig & ~union
        out.doppler = np.zeros((h, w), bool)
        for p in out.panes:
            if p.colour:
                out.doppler |= sat & p.region
        out.marks = sat & union & ~out.doppler
    return out
