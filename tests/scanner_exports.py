"""Frames that look like clinical scanner exports, built at test time from the B-mode simulator (nothing binary is
committed): one, two (side by side) or four (2 x 2) simulated panes on a dark screen at export sizes (800x600,
1024x768, 1280x720, image area not centred), burned-in text banners above and below, a grayscale ramp and a
colour-scale bar beside a pane, orientation and body markers, coloured calipers inside B-mode, a colour-flow
Doppler box (saturated red / blue) and power Doppler (orange / yellow).

Every `Export` carries its truth: each pane's scan region, the burned-in parts beside the panes (by kind), the
colour marks inside B-mode and each pane's Doppler kind, so region coverage, leakage and colour detection can be
measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from usjepa.data.sim.bmode import Layout, make_layout, render, sample_acquisition
from usjepa.data.sim.dressing import CALIPER_COLOURS, dress
from usjepa.data.sim.phantom import LESIONS, ORGANS, Probe, sample_phantom, sample_probe
from usjepa.data.sim.simulate import simulate_frame

SIM_SIDE = 320  # panes are simulated at most this large and scaled up, as scanners scale their scan conversion


@dataclass
class Export:
    """One export frame and its truth (all masks bool [H, W] in the frame's pixel grid)."""

    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    panes: list[np.ndarray]  # true scan region of each pane, left to right, then top to bottom
    colour: list[str]  # each pane's Doppler kind: "" | "colour-flow" | "power"
    beside: dict[str, np.ndarray] = field(default_factory=dict)  # burned-in parts outside the panes, by kind
    marks: np.ndarray | None = None  # coloured calipers / annotations inside B-mode

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    def beside_all(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        for m in self.beside.values():
            out |= m
        return out


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class _Layer:
    """An RGB drawing layer with a mask of what was drawn (so each overlay's pixels are known exactly)."""

    def __init__(self, shape: tuple[int, int]):
        h, w = shape
        self.rgb = Image.new("RGB", (w, h), 0)
        self.mask = Image.new("L", (w, h), 0)
        self.d, self.m = ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.mask)

    def text(self, xy, s: str, fill, size: int, anchor: str = "la") -> None:
        self.d.text(xy, s, fill=fill, font=_font(size), anchor=anchor)
        self.m.text(xy, s, fill=255, font=_font(size), anchor=anchor)

    def rect(self, box, fill) -> None:
        self.d.rectangle(box, fill=fill)
        self.m.rectangle(box, fill=255)

    def line(self, pts, fill, width: int = 1) -> None:
        self.d.line(pts, fill=fill, width=width)
        self.m.line(pts, fill=255, width=width)

    def ellipse(self, box, fill=None, outline=None, width: int = 1) -> None:
        self.d.ellipse(box, fill=fill, outline=outline, width=width)
        self.m.ellipse(box, fill=255 if fill is not None else None, outline=255 if outline is not None else None,
                       width=width)

    def polygon(self, pts, fill) -> None:
        self.d.polygon(pts, fill=fill)
        self.m.polygon(pts, fill=255)

    def paste_onto(self, canvas: np.ndarray, avoid: np.ndarray | None = None) -> np.ndarray:
        """Composite onto canvas (in place) except where `avoid`; returns the drawn pixels."""
        m = np.asarray(self.mask) > 0
        if avoid is not None:
            m &= ~avoid
        canvas[m] = np.asarray(self.rgb)[m]
        return m


def _sim_pane(rng: np.random.Generator, h: int, w: int, pr: Probe, dressed: bool, tight: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A simulated pane scaled to (h, w): (RGB uint8 [h, w, 3], scan region, dressing outside the region).
    `tight`: the scan touches the pane's left and right edges."""
    f = min(1.0, SIM_SIDE / max(h, w))
    hs, ws = max(32, round(h * f)), max(32, round(w * f))
    ph = sample_phantom(rng, pr, str(rng.choice(ORGANS)), str(rng.choice(LESIONS)))
    side = 0.0 if tight else float(rng.uniform(0.04, 0.08))
    lay = make_layout(pr, (hs, ws), (float(rng.uniform(0.06, 0.1)), side, float(rng.uniform(0.04, 0.08))))
    img, mask = render(ph, pr, rng, lay, sample_acquisition(rng))
    gray = np.asarray(Image.fromarray(np.round(img * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0
    gray = np.where(mask, gray, 0).astype(np.uint8)
    if not dressed:
        return np.repeat(gray[..., None], 3, 2), mask, np.zeros_like(mask)
    full = Layout((h, w), lay.spacing * hs / h, lay.x0, lay.z0)
    rgb, ov = dress(gray, mask, pr, full, rng, calipers=False, ecg=False)
    return rgb, mask, ov & ~mask


def _screen(h: int, w: int, rng: np.random.Generator, noise: bool) -> np.ndarray:
    canvas = np.zeros((h, w, 3), np.uint8)
    if noise:  # compression noise on the black screen (video / lossy exports)
        canvas += rng.integers(0, 4, (h, w, 1), dtype=np.uint8)
    return canvas


def _banners(layer: _Layer, rng: np.random.Generator, w: int, top: int, bottom_y: int, band: bool) -> None:
    """Patient / hospital text above, settings and date below (a filled header band on some scanners)."""
    fs = max(10, top // 3)
    if band:
        layer.rect((0, 0, w - 1, top - 4), fill=(52, 56, 60))
    layer.text((8, 3), f"ST MARY HOSPITAL   DOE^JANE   ID {rng.integers(10**6, 10**7)}", (235, 235, 235), fs)
    layer.text((w // 2, 3), f"{rng.integers(1, 29):02d}/0{rng.integers(1, 10)}/2024  10:4{rng.integers(10)}:12",
               (235, 235, 235), fs)
    layer.text((w - 13 * fs // 2, 3), "MI 1.1 TIs 0.4", (200, 200, 200), fs)
    layer.text((8, bottom_y), f"Abd  C5-1  Gn {rng.integers(30, 70)}  DR 60  FR {rng.integers(12, 40)}Hz",
               (210, 210, 210), fs)
    layer.text((w // 2, bottom_y), "Store: frame 1/1   Prs 3", (180, 180, 180), fs)


def _gray_ramp(layer: _Layer, x: int, y: int, h: int, w: int) -> None:
    for i in range(h):
        v = round(255 * (1 - i / max(1, h - 1)))
        layer.line([(x, y + i), (x + w - 1, y + i)], fill=(v, v, v))


def _colour_bar(layer: _Layer, x: int, y: int, h: int, w: int, kind: str, fs: int) -> None:
    """A velocity scale (red above black above blue) or a power scale (dark red -> orange -> yellow), labelled."""
    for i in range(h):
        t = i / max(1, h - 1)
        if kind == "power":
            c = (round(120 + 135 * (1 - t)), round(230 * (1 - t) ** 1.5), round(40 * (1 - t) ** 4))
        else:
            a = abs(t - 0.5) * 2
            c = (round(255 * a), round(90 * a ** 3), 0) if t < 0.5 else (0, round(110 * a ** 3), round(255 * a))
        layer.line([(x, y + i), (x + w - 1, y + i)], fill=c)
    layer.text((x + w, y - fs - 2), "+24.1" if kind != "power" else "PDI", (230, 230, 230), fs, "ra")
    layer.text((x + w, y + h + 2), "-24.1" if kind != "power" else "cm/s", (230, 230, 230), fs, "ra")


def _markers(layer: _Layer, region: np.ndarray, rng: np.random.Generator, coloured: bool) -> None:
    """Probe orientation logo above the top-left corner of the scan, body marker pictogram near its bottom corner."""
    ys, xs = np.nonzero(region)
    t, b, lft, r = ys.min(), ys.max(), xs.min(), xs.max()
    s = max(6, (b - t) // 40)
    c = (90, 160, 255) if coloured else (220, 220, 220)
    y0 = max(0, t - 2 * s - s // 2)  # above the scan's top-left corner
    layer.ellipse((lft, y0, lft + s, y0 + s), fill=c)
    bx, by = r + 2 * s, b - 5 * s
    layer.ellipse((bx, by, bx + 3 * s, by + 4 * s), outline=(200, 200, 200), width=1)
    layer.line([(bx - s // 2, by + 2 * s), (bx + 2 * s, by + 3 * s)], fill=(255, 255, 255), width=2)


def _calipers(layer: _Layer, region: np.ndarray, rng: np.random.Generator, n: int = 2) -> None:
    """Caliper crosses with a dotted measurement line, plus a small coloured text label, inside the scan."""
    inner = ndi.minimum_filter(region.view(np.uint8), 41).view(bool)
    ys, xs = np.nonzero(inner)
    h = int(np.ptp(np.nonzero(region)[0])) + 1
    arm = max(3, h // 60)
    for _ in range(n):
        col = CALIPER_COLOURS[int(rng.integers(len(CALIPER_COLOURS)))]
        a, b = rng.choice(len(ys), 2, replace=False)
        p, q = (int(xs[a]), int(ys[a])), (int(xs[b]), int(ys[b]))
        for x, y in (p, q):
            layer.line([(x - arm, y), (x + arm, y)], fill=col)
            layer.line([(x, y - arm), (x, y + arm)], fill=col)
        k = max(2, int(np.hypot(q[0] - p[0], q[1] - p[1]) // 5))
        for i in range(1, k):
            x, y = p[0] + (q[0] - p[0]) * i / k, p[1] + (q[1] - p[1]) * i / k
            layer.line([(int(x), int(y)), (int(x) + 1, int(y))], fill=col)
    x, y = int(xs[len(xs) // 3]), int(ys[len(ys) // 3])
    layer.text((x, y), "D1 1.42cm", (255, 255, 0), max(10, h // 35))
    x, y = int(xs[2 * len(xs) // 3]), int(ys[2 * len(ys) // 3])  # a filled arrow pointing at a finding
    s = max(8, h // 30)
    layer.polygon([(x, y), (x + s, y + s // 2), (x + s // 2, y + s)], fill=(0, 255, 255))
    layer.line([(x + s // 2, y + s // 2), (x + 2 * s, y + 2 * s)], fill=(0, 255, 255), width=2)


def _doppler(canvas: np.ndarray, region: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A colour box over part of the scan: flow in vessels (red / blue by direction) or power (orange / yellow).
    Returns the coloured pixels."""
    ys, xs = np.nonzero(ndi.minimum_filter(region.view(np.uint8), 9))
    t, b, lft, r = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = int((b - t) * rng.uniform(0.35, 0.5)), int((r - lft) * rng.uniform(0.35, 0.5))
    y0 = int(t + rng.uniform(0.1, 0.4) * (b - t - bh))
    x0 = int(lft + rng.uniform(0.3, 0.7) * (r - lft - bw))
    yy, xx = np.mgrid[0:bh, 0:bw]
    if kind == "power":
        field = ndi.gaussian_filter(rng.standard_normal((bh, bw)), max(3.0, bh / 14))
        field /= field.std() + 1e-9
        on = field > 0.6
        v = np.clip((field - 0.6) / 1.6, 0, 1)
        rgb = np.stack([150 + 105 * v, 40 + 210 * v ** 0.8, 25 * v ** 3], -1)
    else:
        on = np.zeros((bh, bw), bool)
        vel = np.zeros((bh, bw))
        for k in range(2):  # an artery and a vein crossing the box in opposite directions
            yc = bh * (0.3 + 0.4 * k) + (xx - bw / 2) * rng.uniform(-0.25, 0.25)
            rad = bh * rng.uniform(0.08, 0.13)
            d = np.abs(yy - yc)
            inside = d < rad
            on |= inside
            vel = np.where(inside, (1 - (d / rad) ** 2) * (1 if k == 0 else -1), vel)
        v = np.abs(vel)
        pos = vel > 0
        rgb = np.where(pos[..., None], np.stack([120 + 135 * v, 160 * v ** 3, 0 * v], -1),
                       np.stack([0 * v, 120 * v ** 3, 120 + 135 * v], -1))
    box = np.zeros(region.shape, bool)
    box[y0:y0 + bh, x0:x0 + bw] = on
    box &= region
    sub = rgb.astype(np.uint8)
    canvas[y0:y0 + bh, x0:x0 + bw][box[y0:y0 + bh, x0:x0 + bw]] = sub[box[y0:y0 + bh, x0:x0 + bw]]
    outline = np.zeros(region.shape, bool)  # the colour box outline (light gray on most scanners)
    outline[y0, x0:x0 + bw] = outline[y0 + bh - 1, x0:x0 + bw] = True
    outline[y0:y0 + bh, x0] = outline[y0:y0 + bh, x0 + bw - 1] = True
    canvas[outline & region] = 200
    return box


def make_export(name: str, size: tuple[int, int], boxes: list[tuple[int, int, int, int]], probe: str,
                seed: int, colour: list[str] | None = None, band: bool = False, ramp: int | None = 0,
                bar: int | None = None, calipers: tuple[int, ...] = (0,), noise: bool = False,
                side_panel: bool = False, dressed: bool = True, tight: bool = False, gap: int = 8) -> Export:
    """An export of `size` (H, W) with panes of one simulated probe at `boxes` (top, left, height, width).
    `ramp` / `bar`: the pane beside which the grayscale ramp / colour-scale bar stands (None: none); `calipers`:
    the panes with calipers; `tight`: scans reach their panes' left and right edges (narrow gutters); `gap`: pixels
    between a pane's box and the ramp / bar beside it."""
    rng = np.random.default_rng(seed)
    pr = sample_probe(rng, probe)
    h, w = size
    colour = colour or [""] * len(boxes)
    canvas = _screen(h, w, rng, noise)
    panes, beside = [], {}
    dress_out = np.zeros((h, w), bool)
    for y, x, ph, pw in boxes:
        rgb, mask, ov = _sim_pane(rng, ph, pw, pr, dressed and not tight, tight)
        sl = (slice(y, y + ph), slice(x, x + pw))
        keep = mask | ov
        canvas[sl][keep] = rgb[keep]
        full = np.zeros((h, w), bool)
        full[sl] = mask
        panes.append(full)
        dress_out[sl] |= ov
    beside["ruler_and_text"] = dress_out
    top = min(b[0] for b in boxes)
    bottom = max(b[0] + b[2] for b in boxes)
    lay = _Layer((h, w))
    _banners(lay, rng, w, max(18, top), min(h - 16, bottom + 6), band)
    beside["banners"] = lay.paste_onto(canvas, np.any(panes, 0))
    fs = max(10, h // 60)
    for kind, at in (("gray_ramp", ramp), ("colour_bar", bar)):
        if at is None:
            continue
        y, x, ph, pw = boxes[at]
        lay = _Layer((h, w))
        bw, bh = max(8, w // 90), ph // 2
        bx = x + pw + gap if kind == "gray_ramp" else max(2, x - bw - gap - 2)
        if kind == "gray_ramp":
            _gray_ramp(lay, bx, y + ph // 4, bh, bw)
        else:
            _colour_bar(lay, bx, y + ph // 4, bh, bw, "power" if "power" in colour else "flow", fs)
        beside[kind] = lay.paste_onto(canvas, np.any(panes, 0))
    lay = _Layer((h, w))
    for i, p in enumerate(panes):
        _markers(lay, p, rng, coloured=i == 0)
    beside["markers"] = lay.paste_onto(canvas, np.any(panes, 0))
    if side_panel:  # a measurement report panel beside the image area
        lay = _Layer((h, w))
        x0 = max(b[1] + b[3] for b in boxes) + 40
        lay.rect((x0, top, w - 12, top + (bottom - top) // 2), fill=(38, 40, 44))
        for i, s in enumerate(["Measurements", "D1  1.42 cm", "D2  0.87 cm", "Vol 0.55 ml", "RI  0.61"]):
            lay.text((x0 + 8, top + 8 + i * (fs + 6)), s, (230, 230, 230), fs)
        beside["side_panel"] = lay.paste_onto(canvas)
    marks = np.zeros((h, w), bool)
    for i in calipers:
        lay = _Layer((h, w))
        _calipers(lay, panes[i], rng)
        marks |= lay.paste_onto(canvas) & panes[i]
    for i, kind in enumerate(colour):
        if kind:
            _doppler(canvas, panes[i], rng, kind)
    return Export(name, canvas, panes, list(colour), beside, marks)


def dressed_single(seed: int, size: int | tuple[int, int] = 256, probe: str | None = None) -> Export:
    """The simulator's own single-pane dressed frame (text, ruler, calipers, ECG) as an export."""
    f = simulate_frame(seed, size, probe=probe, dressed=True)
    img = f["image"] if f["image"].ndim == 3 else np.repeat(f["image"][..., None], 3, 2)
    return Export(f"dressed_{f['probe'].kind}_{seed}", img, [f["mask"]], [""], {"dressing": f["overlay"] & ~f["mask"]},
                  f["overlay"] & f["mask"])


@lru_cache(maxsize=2)
def realistic_exports(seed: int = 0) -> tuple[Export, ...]:
    """The set the layout tests run on: dual, quad, colour-flow, power Doppler, off-centre and plain exports
    (built once per process and seed; copy an image before changing it)."""
    return (
        make_export("dual_linear_1024x768", (768, 1024), [(70, 70, 430, 410), (70, 530, 430, 410)], "linear", seed,
                    band=True, ramp=1, calipers=(0,)),
        make_export("dual_linear_gutter3_1024x768", (768, 1024), [(90, 100, 420, 400), (90, 503, 420, 400)],
                    "linear", seed + 1, ramp=1, calipers=(1,), noise=True, tight=True),
        make_export("dual_curvilinear_1024x768", (768, 1024), [(80, 60, 440, 450), (80, 513, 440, 450)],
                    "curvilinear", seed + 2, ramp=1, calipers=(1,), noise=True),
        make_export("quad_phased_800x600", (600, 800), [(50, 120, 250, 270), (50, 400, 250, 270),
                                                        (310, 120, 250, 270), (310, 400, 250, 270)],
                    "phased", seed + 3, ramp=1, calipers=(2,)),
        make_export("dual_bmode_colourflow_1280x720", (720, 1280), [(70, 90, 540, 520), (70, 660, 540, 520)],
                    "linear", seed + 4, colour=["", "colour-flow"], ramp=0, bar=1, calipers=(0,)),
        make_export("colourflow_curvilinear_800x600", (600, 800), [(50, 150, 480, 500)], "curvilinear", seed + 5,
                    colour=["colour-flow"], ramp=0, bar=0, calipers=()),
        make_export("power_linear_1024x768", (768, 1024), [(80, 240, 560, 520)], "linear", seed + 6,
                    colour=["power"], ramp=0, bar=0, calipers=(), band=True),
        make_export("single_offcentre_1280x720", (720, 1280), [(60, 80, 600, 640)], "curvilinear", seed + 7,
                    ramp=0, calipers=(0,), side_panel=True, noise=True),
        make_export("single_calipers_800x600", (600, 800), [(50, 200, 500, 420)], "linear", seed + 8,
                    ramp=0, calipers=(0,)),
        make_export("bars_2px_from_scan_800x600", (600, 800), [(50, 150, 480, 500)], "linear", seed + 9,
                    ramp=0, bar=0, calipers=(0,), tight=True, gap=2),
    )


def by_name(seed: int = 0) -> dict[str, Export]:
    return {e.name: e for e in realistic_exports(seed)}


def write_dicom_frames(path, frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8,
                       patient: str = "P1", modality: str = "") -> None:
    """A minimal uncompressed DICOM (secondary capture) holding frames [N, H, W] or [N, H, W, 3]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    if modality:
        ds.Modality = modality
    n, h, w = frames.shape[:3]
    ds.Rows, ds.Columns = h, w
    if n > 1:
        ds.NumberOfFrames = n
    colour = frames.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(frames, np.uint16 if bits > 8 else np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_dicom(path, frames: np.ndarray, patient: str = "P1") -> None:
    """A scanner-like US DICOM of uint8 RGB frames [N, H, W, 3] (or one frame [H, W, 3])."""
    write_dicom_frames(path, frames[None] if frames.ndim == 3 else frames, "RGB", 8, patient, modality="US")
