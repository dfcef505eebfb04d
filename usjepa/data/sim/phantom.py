"""Probes and tissue phantoms for the B-mode simulator: geometry, echogenicity map E(x, z), attenuation, labels.

A phantom lives in Cartesian millimetres (x lateral, z depth below the skin centre line). The simulator samples it on
its polar (depth x line) grid. Everything here is a pure function of a numpy Generator, so a seed gives one phantom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from usjepa.data.spec import LESIONS, ORGANS, PROBES  # the names the `data:` section accepts

LESION_SIZE = (0.08, 0.25)  # default lesion diameter range, as a fraction of the imaging depth
C_MM_PER_US = 1.54  # speed of sound, mm per microsecond


@dataclass
class Probe:
    """Transducer geometry and acoustics. Sector probes fan out from a virtual apex `apex_mm` above the skin."""

    kind: str = "curvilinear"  # linear | curvilinear | phased
    depth_mm: float = 120.0
    angle_deg: float = 70.0  # sector opening (curvilinear / phased)
    apex_mm: float = 40.0  # virtual apex above the skin (0 for phased)
    width_mm: float = 40.0  # field of view width (linear)
    f0_mhz: float = 3.5
    bandwidth: float = 0.6  # fractional -6 dB bandwidth
    focus_mm: float = 60.0
    aperture_mm: float = 20.0
    psf_scale: float = 1.0  # >1 widens the PSF (coarser speckle), as a lower-end scanner would

    @property
    def sector(self) -> bool:
        return self.kind != "linear"

    @property
    def wavelength_mm(self) -> float:
        return C_MM_PER_US / self.f0_mhz

    def axial_sigma_mm(self) -> float:
        """Pulse-echo axial Gaussian sigma: FWHM = c * 0.883 / (2 B f0) (Gaussian time-bandwidth product)."""
        fwhm = C_MM_PER_US * 0.883 / (2.0 * self.bandwidth * self.f0_mhz)
        return self.psf_scale * fwhm / 2.355

    def lateral_sigma_mm(self, r: np.ndarray) -> np.ndarray:
        """Lateral sigma at depth r: FWHM = wavelength x F-number, F# smallest at the focus and growing away from it."""
        grow = np.where(r > self.focus_mm, 0.8, 0.5)  # the beam diverges faster beyond the focus than it converges
        f_number = (self.focus_mm / self.aperture_mm) * (1.0 + grow * np.abs(r - self.focus_mm) / self.focus_mm)
        return self.psf_scale * self.wavelength_mm * f_number / 2.355

    def lateral_extent(self) -> float:
        """Half-width of the scan lines' lateral coordinate: radians for sectors, millimetres for linear arrays."""
        return np.deg2rad(self.angle_deg) / 2 if self.sector else self.width_mm / 2

    def to_xz(self, r: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polar (depth along line r, lateral coordinate) -> Cartesian (x, z) in mm; z = 0 at the skin centre."""
        if not self.sector:
            return np.broadcast_to(lat, np.broadcast_shapes(np.shape(r), np.shape(lat))), \
                np.broadcast_to(r, np.broadcast_shapes(np.shape(r), np.shape(lat)))
        rr = self.apex_mm + r
        return rr * np.sin(lat), rr * np.cos(lat) - self.apex_mm

    def fan_area_mm2(self) -> float:
        """Analytic area of the imaged region (annular sector or rectangle)."""
        if not self.sector:
            return self.width_mm * self.depth_mm
        phi = np.deg2rad(self.angle_deg)
        return 0.5 * phi * ((self.apex_mm + self.depth_mm) ** 2 - self.apex_mm ** 2)


@dataclass
class Ellipse:
    """A soft-edged elliptical inclusion; `echo` replaces E inside (None keeps it), `wall` adds a bright rim."""

    cx: float
    cz: float
    a: float
    b: float
    angle: float = 0.0
    echo: float | None = 1.0
    soft_mm: float = 0.5
    att: float | None = None  # attenuation multiplier inside (cyst ~0.05: posterior enhancement)
    shadow_db: float = 0.0  # extra two-way loss for everything behind it (strong reflector -> acoustic shadow)
    wall: float = 0.0
    wall_mm: float = 0.4
    irregular: tuple[tuple[int, float, float], ...] = ()  # radial harmonics (k, amplitude, phase)


@dataclass
class Lesion:
    kind: str  # one of LESIONS
    diameter_mm: float = 0.0
    echo_db: float = 0.0  # 10 log10(E_lesion / E_background)
    shape: Ellipse | None = None


@dataclass
class Phantom:
    """Background texture + layers + inclusions; `lesion` carries the labels."""

    organ: str = "liver"
    level: float = 1.0
    lowfreq_amp: float = 0.0  # smooth +-variation of the background
    lowfreq: tuple = ()  # ((kx, kz, phase), ...) in rad/mm
    striation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (amplitude, period_mm, angle_rad): muscle fibres
    lobules: tuple[float, float] = (0.0, 0.0)  # (echo of lobules, threshold): fat lobules (breast)
    lobule_waves: tuple = ()
    gamma_shape: float | None = None  # scatterer number density ~ Gamma(k): K-distributed texture when small
    layers: list[tuple[float, float, float]] = field(default_factory=list)  # (r_start_mm, r_end_mm, echo) along lines
    shapes: list[Ellipse] = field(default_factory=list)
    lesion: Lesion | None = None
    alpha_db: float = 0.6  # attenuation, dB / cm / MHz


def sample_probe(rng: np.random.Generator, kind: str | None = None) -> Probe:
    """A random but typical probe of the given kind (linear 7-12 MHz, curvilinear 2.5-5 MHz, phased 1.7-3.5 MHz)."""
    kind = kind or str(rng.choice(PROBES, p=[0.35, 0.45, 0.2]))
    u = rng.uniform
    if kind == "linear":
        d = u(30, 60)
        return Probe("linear", d, 0.0, 0.0, u(35, 50), u(7, 12), u(0.5, 0.8), u(0.3, 0.6) * d, u(10, 20), u(1.0, 1.8))
    if kind == "curvilinear":
        d = u(80, 160)
        return Probe("curvilinear", d, u(55, 75), u(20, 60), 0.0, u(2.5, 5), u(0.5, 0.8), u(0.3, 0.55) * d,
                     u(15, 30), u(1.0, 1.8))
    if kind == "phased":
        d = u(100, 170)
        return Probe("phased", d, u(75, 90), 0.0, 0.0, u(1.7, 3.5), u(0.5, 0.8), u(0.3, 0.55) * d, u(14, 20),
                     u(1.0, 1.6))
    raise ValueError(f"unknown probe kind '{kind}'; use one of {PROBES}")


def _waves(rng: np.random.Generator, n: int, lo_mm: float, hi_mm: float) -> tuple:
    lam = rng.uniform(lo_mm, hi_mm, n)
    ang = rng.uniform(0, np.pi, n)
    k = 2 * np.pi / lam
    return tuple((float(a), float(b), float(c))  # plain floats keep the float32 maps float32
                 for a, b, c in zip(k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * np.pi, n), strict=True))


def _point_in_fan(rng: np.random.Generator, probe: Probe, radius: float, depth_range=(0.25, 0.8)
                  ) -> tuple[float, float]:
    r = rng.uniform(*depth_range) * probe.depth_mm
    if probe.sector:
        half = probe.lateral_extent() - np.arcsin(min(0.99, 1.3 * radius / (probe.apex_mm + r + 1e-6)))
        lat = rng.uniform(-1, 1) * max(half, 0.05)
    else:
        lat = rng.uniform(-1, 1) * max(probe.width_mm / 2 - 1.3 * radius, 1.0)
    x, z = probe.to_xz(np.float64(r), np.float64(lat))
    return float(x), float(z)


def check_lesion_size(size: tuple[float, float] | list[float]) -> tuple[float, float]:
    """(lo, hi) fractions of the depth with 0 < lo <= hi <= 0.6, or a ValueError naming the value."""
    try:
        lo, hi = (float(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"lesion size {size!r} must be two numbers [lo, hi], fractions of the imaging depth "
                         f"(default {list(LESION_SIZE)})") from None
    if not 0 < lo <= hi <= 0.6:
        raise ValueError(f"lesion size [{lo}, {hi}] must satisfy 0 < lo <= hi <= 0.6 (fractions of the imaging depth; "
                         f"default {list(LESION_SIZE)})")
    return lo, hi


def sample_lesion(rng: np.random.Generator, probe: Probe, kind: str,
                  size: tuple[float, float] = LESION_SIZE) -> Lesion:
    """A lesion of random size, position and contrast; a cyst is anechoic and barely attenuating.

    The diameter is uniform in `size` x depth, clipped to [3 mm, 128 mm x size[1]] (32 mm at the default range).
    """
    if kind == "normal":
        return Lesion("normal")
    if kind not in LESIONS:
        raise ValueError(f"unknown lesion kind '{kind}'; use one of {LESIONS}")
    lo, hi = check_lesion_size(size)
    diam = float(np.clip(rng.uniform(lo, hi) * probe.depth_mm, 3.0, 128.0 * hi))
    aspect = rng.uniform(0.65, 1.0)
    a, b = diam / 2 / np.sqrt(aspect), diam / 2 * np.sqrt(aspect)
    cx, cz = _point_in_fan(rng, probe, a)
    ang = rng.uniform(-0.5, 0.5)
    if kind == "cyst":
        echo = rng.uniform(0.005, 0.02)
        shp = Ellipse(cx, cz, a, b, ang, echo, soft_mm=rng.uniform(0.2, 0.5), att=rng.uniform(0.15, 0.4))
    else:
        db = rng.uniform(4, 12) * (-1 if kind == "solid_hypoechoic" else 1)
        echo = 10 ** (db / 10)
        irr = tuple((int(k), float(rng.uniform(0.03, 0.15)), float(rng.uniform(0, 2 * np.pi))) for k in (3, 5, 7))
        att = rng.uniform(1.0, 2.0) if kind == "solid_hypoechoic" else 1.0
        shp = Ellipse(cx, cz, a, b, ang, echo, soft_mm=rng.uniform(0.5, 1.5), att=att, irregular=irr)
    return Lesion(kind, 2 * float(np.sqrt(a * b)), float(10 * np.log10(echo)), shp)


def sample_phantom(rng: np.random.Generator, probe: Probe, organ: str, lesion: str,
                   lesion_size: tuple[float, float] = LESION_SIZE) -> Phantom:
    """An organ-like phantom (texture class `organ`) holding a lesion of kind `lesion` (or none for 'normal')."""
    u = rng.uniform
    d = probe.depth_mm
    skin = u(0.8, 2.0)
    fat = u(2, 10) * (0.5 if probe.kind == "linear" else 1.0)
    layers = [(0.0, skin, 2.5), (skin, skin + fat, u(0.3, 0.6)), (skin + fat, skin + fat + u(0.4, 1.0), u(2.0, 3.5))]
    ph = Phantom(organ=organ, lowfreq_amp=u(0.05, 0.2), lowfreq=_waves(rng, 5, 15, 60), layers=layers,
                 alpha_db=u(0.45, 0.75))
    shapes: list[Ellipse] = []
    if organ == "liver":
        ph.level, ph.gamma_shape = 1.0, u(8, 30)
        for _ in range(rng.integers(1, 5)):  # portal / hepatic vessels: anechoic with bright walls
            a = u(1.5, 5) * d / 120
            cx, cz = _point_in_fan(rng, probe, a, (0.2, 0.9))
            shapes.append(Ellipse(cx, cz, a * u(1.0, 2.5), a, u(-1, 1), u(0.01, 0.05), 0.3, att=0.4,
                                  wall=u(0.8, 2.0) if rng.random() < 0.6 else 0.0))
    elif organ == "kidney":
        ph.level, ph.gamma_shape = u(1.2, 1.6), u(2, 5)
        a, b = u(0.25, 0.4) * d, u(0.14, 0.22) * d
        cx, cz = _point_in_fan(rng, probe, b, (0.45, 0.6))
        ang = u(-0.4, 0.4)
        shapes.append(Ellipse(cx, cz, a, b, ang, u(0.4, 0.7), 1.0, wall=u(2, 4), wall_mm=u(0.4, 0.8)))
        irr = tuple((int(k), float(u(0.05, 0.2)), float(u(0, 2 * np.pi))) for k in (2, 3, 5))
        shapes.append(Ellipse(cx, cz, a * u(0.45, 0.6), b * u(0.3, 0.45), ang, u(1.8, 3.0), 1.0, irregular=irr))
    elif organ == "muscle":
        ph.level, ph.gamma_shape = u(0.7, 0.9), u(3, 8)
        ph.striation = (u(0.4, 0.8), u(1.5, 4.0) * d / 50, u(-0.35, 0.35))
        r = skin + fat + 1.0
        for _ in range(rng.integers(1, 4)):  # fascia planes
            r += u(0.15, 0.35) * d
            if r < d:
                ph.layers.append((r, r + u(0.4, 1.0), u(2.0, 3.5)))
    elif organ == "breast":
        ph.level, ph.gamma_shape = u(1.3, 1.7), u(0.8, 2.0)
        ph.lobules = (u(0.2, 0.45), u(0.2, 0.6))
        ph.lobule_waves = _waves(rng, 6, 0.12 * d, 0.35 * d)
    else:
        raise ValueError(f"unknown organ '{organ}'; use one of {ORGANS}")
    if rng.random() < 0.25:  # a calcification / stone: bright, casts an acoustic shadow
        a = u(0.8, 2.0)
        cx, cz = _point_in_fan(rng, probe, a, (0.2, 0.85))
        shapes.append(Ellipse(cx, cz, a, a * u(0.6, 1.0), 0.0, u(10, 30), 0.2, shadow_db=-20 * np.log10(u(0.2, 0.5))))
    ph.shapes = shapes
    ph.lesion = sample_lesion(rng, probe, lesion, lesion_size)
    return ph


def _ellipse_weight(s: Ellipse, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Inside weight in [0, 1] (soft edge) and the rim profile (or None) of an ellipse at points (x, z)."""
    dx, dz = x - np.float32(s.cx), z - np.float32(s.cz)
    c, si = np.float32(np.cos(s.angle)), np.float32(np.sin(s.angle))
    uu, vv = (dx * c + dz * si) / s.a, (-dx * si + dz * c) / s.b
    rho = np.sqrt(uu * uu + vv * vv)
    if s.irregular:
        phi = np.arctan2(vv, uu)
        rho = rho / (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in s.irregular))
    rmean = np.sqrt(s.a * s.b)
    dist = (1.0 - rho) * rmean  # mm inside the boundary (approximately)
    w = np.clip(dist / max(s.soft_mm, 1e-3) + 0.5, 0.0, 1.0)
    rim = np.exp(-((dist / s.wall_mm) ** 2)) if s.wall > 0 else None
    return w, rim


def echo_map(ph: Phantom, probe: Probe, r: np.ndarray, lat: np.ndarray, shift: tuple[float, float, float] = (0, 0, 0)
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Echogenicity E, attenuation multiplier and extra shadow loss (dB, two-way) on a polar grid.

    r: [Nr] depth along the line (mm); lat: [Nl] lateral coordinate; shift: (dx mm, dz mm, rotation rad) frame motion.
    Returns three float32 arrays [Nr, Nl].
    """
    rr, ll = np.meshgrid(r.astype(np.float32), lat.astype(np.float32), indexing="ij")
    x, z = probe.to_xz(rr, ll)
    dx, dz, rot = shift
    if rot or dx or dz:  # move the tissue, not the probe: sample the phantom at the inversely moved points
        c, s = np.float32(np.cos(rot)), np.float32(np.sin(rot))  # float32 scalars keep the maps float32
        xm, zm = x - np.float32(dx), z - np.float32(dz)
        x, z = c * xm + s * zm, -s * xm + c * zm
    e = np.full(x.shape, ph.level, np.float32)
    if ph.lowfreq_amp:
        wave = sum(np.cos(kx * x + kz * z + p) for kx, kz, p in ph.lowfreq) / np.sqrt(len(ph.lowfreq))
        e *= 1.0 + ph.lowfreq_amp * wave
    amp, period, ang = ph.striation
    if amp:
        e *= 1.0 + amp * np.cos(2 * np.pi * (z * np.cos(ang) + x * np.sin(ang)) / period)
    if ph.lobules[0]:
        f = sum(np.cos(kx * x + kz * z + p) for kx, kz, p in ph.lobule_waves) / np.sqrt(len(ph.lobule_waves))
        w = np.clip((f - ph.lobules[1]) * 4.0, 0.0, 1.0)
        e *= 1.0 + (ph.lobules[0] / ph.level - 1.0) * w
    att = np.ones_like(e)
    shadow = np.zeros_like(e)
    for r0, r1, val in ph.layers:  # layers follow the probe surface (rows of the polar grid)
        rows = (r >= r0) & (r < r1)
        e[rows] = val
    shapes = list(ph.shapes) + ([ph.lesion.shape] if ph.lesion is not None and ph.lesion.shape is not None else [])
    for s in shapes:
        reach = max(s.a, s.b) * (1.0 + sum(abs(amp) for _, amp, _ in s.irregular)) + s.soft_mm + 3 * s.wall_mm
        near = (np.abs(x - s.cx) < reach) & (np.abs(z - s.cz) < reach)  # evaluate the shape on its bounding box only
        rows, cols = np.nonzero(near.any(1))[0], np.nonzero(near.any(0))[0]
        if not len(rows):
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        w, rim = _ellipse_weight(s, x[box], z[box])
        eb = e[box]
        if s.echo is not None:
            eb += (np.float32(s.echo) - eb) * w
        if rim is not None:
            eb += np.float32(s.wall) * rim
        if s.att is not None:
            att[box] += (np.float32(s.att) - att[box]) * w
        if s.shadow_db:
            shadow[box] += np.float32(s.shadow_db / max(2 * min(s.a, s.b) / max(float(r[1] - r[0]), 1e-3), 1.0)) * w
    return np.maximum(e, 1e-4), att, shadow
