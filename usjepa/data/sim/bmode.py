"""Convolution-model B-mode physics: scatterers, PSF, attenuation/TGC, noise, envelope, log, scan conversion.

Works on a polar grid (depth samples x scan lines): complex Gaussian scatterer amplitudes scaled by the phantom's
echogenicity (fully developed speckle, Rayleigh envelope), an axial Gaussian PSF (fixed) and a lateral Gaussian PSF
whose width follows wavelength x F-number (narrowest at the focus), applied per depth row in the Fourier domain. Scan
conversion to the sector / rectangle yields the image and its fan mask. All vectorised numpy/scipy.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from usjepa.data.sim.phantom import Phantom, Probe, echo_map


@dataclass
class Acquisition:
    """Per-frame scanner settings."""

    dynamic_range_db: float = 55.0
    gain: float = 0.55  # display level (0..1) of the median echo
    tgc: float = 0.9  # share of the tissue attenuation the time-gain compensation undoes
    noise_db: float = -55.0  # thermal noise power relative to the mean signal power
    gamma: float = 1.0  # gray-map gamma applied after log compression


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    return Acquisition(rng.uniform(50, 60), rng.uniform(0.45, 0.65), rng.uniform(0.8, 0.95), rng.uniform(-60, -50),
                       rng.uniform(0.8, 1.2))


@dataclass
class Layout:
    """Where the scan lands in the output image: size (H, W), pixel spacing (mm) and the mm position of pixel (0, 0)."""

    size: tuple[int, int]
    spacing: float
    x0: float
    z0: float


def make_layout(probe: Probe, size: tuple[int, int], margins: tuple[float, float, float] = (0.08, 0.06, 0.06)
                ) -> Layout:
    """Fit the scanned region into an image of `size` leaving (top, side, bottom) margins as image fractions."""
    h, w = size
    top, side, bottom = margins
    if probe.sector:
        half = probe.lateral_extent()
        rmax = probe.apex_mm + probe.depth_mm
        xmax = rmax * np.sin(min(half, np.pi / 2))
        zmin = probe.apex_mm * np.cos(half) - probe.apex_mm
    else:
        xmax, zmin = probe.width_mm / 2, 0.0
    spacing = max(2 * xmax / (w * (1 - 2 * side)), (probe.depth_mm - zmin) / (h * (1 - top - bottom)))
    return Layout((h, w), float(spacing), float(-(w - 1) / 2 * spacing), float(zmin - top * h * spacing))


def polar_grid(probe: Probe, size: tuple[int, int], pad: int = 16) -> tuple[np.ndarray, np.ndarray, int]:
    """Depth samples r [Nr] (mm) and lateral line coordinates [Nl + 2 pad] (rad or mm); lines beyond the edges are
    padding that keeps the Fourier-domain lateral filter from wrapping around."""
    n_r = int(round(1.4 * size[0]))
    n_l = int(round(0.75 * size[1]))
    r = np.linspace(0.0, probe.depth_mm, n_r)
    ext = probe.lateral_extent()
    dl = 2 * ext / (n_l - 1)
    lat = -ext + dl * np.arange(-pad, n_l + pad)
    return r, lat, pad


def simulate_polar(ph: Phantom, probe: Probe, rng: np.random.Generator, size: tuple[int, int],
                   acq: Acquisition | None = None, shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
                   attenuation: bool = True, noise: bool = True) -> dict[str, np.ndarray]:
    """Envelope on the polar grid. Returns env [Nr, Nl] (float32, before log compression), echo [Nr, Nl], r, lat."""
    acq = acq or Acquisition()
    r, lat, pad = polar_grid(probe, size)
    dr, dl = float(r[1] - r[0]), float(lat[1] - lat[0])
    e, att, shadow = echo_map(ph, probe, r, lat, shift)  # [Nr, Nl+2p] each
    z = rng.standard_normal((2,) + e.shape, dtype=np.float32)
    amp = np.sqrt(e * 0.5)
    if ph.gamma_shape is not None:  # scatterer density fluctuates: K-distributed (sub-Rayleigh) texture
        amp *= np.sqrt(rng.standard_gamma(ph.gamma_shape, e.shape, dtype=np.float32) / np.float32(ph.gamma_shape))
    if attenuation:
        per_mm = 2 * ph.alpha_db / 10.0 * probe.f0_mhz  # two-way dB per mm of tissue
        loss = np.cumsum(per_mm * dr * att + shadow, axis=0) - (per_mm * dr * att + shadow)
        gain = (acq.tgc * per_mm * r[:, None]).astype(np.float32)
        amp *= np.exp((gain - loss) * np.float32(np.log(10.0) / 20.0))
    iq = (amp * z[0]) + 1j * (amp * z[1])  # complex64 [Nr, Nl+2p]
    # lateral PSF: a Gaussian of depth-dependent width, one transfer function per depth row
    sig_mm = probe.lateral_sigma_mm(r)
    sig = sig_mm / ((probe.apex_mm + np.maximum(r, 0.5 * dr)) * dl) if probe.sector else sig_mm / dl
    sig = np.clip(sig, 0.3, iq.shape[1] / 8)
    f = sfft.fftfreq(iq.shape[1]).astype(np.float32)
    transfer = np.exp(-2 * np.pi ** 2 * (sig[:, None] ** 2) * f[None, :] ** 2).astype(np.float32)
    transfer /= np.sqrt(np.mean(transfer ** 2, axis=1, keepdims=True))  # unit-energy PSF: mean speckle power = E
    iq = sfft.ifft(sfft.fft(iq, axis=1) * transfer, axis=1)
    sig_z = probe.axial_sigma_mm() / dr
    if sig_z > 0.25:
        iq = ndi.gaussian_filter1d(iq, sig_z, axis=0, truncate=3.0)
        delta = np.zeros(int(8 * sig_z) * 2 + 1, np.float32)
        delta[len(delta) // 2] = 1.0
        iq /= np.float32(np.sqrt(np.sum(ndi.gaussian_filter1d(delta, sig_z, truncate=3.0) ** 2)))
    iq = iq[:, pad:-pad]
    if noise:
        p = float(np.mean(iq.real ** 2 + iq.imag ** 2))
        s = np.float32(np.sqrt(p * 10 ** (acq.noise_db / 10) / 2))
        n = rng.standard_normal((2,) + iq.shape, dtype=np.float32) * s
        iq = iq.copy()
        iq.real += n[0]
        iq.imag += n[1]
    env = np.abs(iq).astype(np.float32)
    return {"env": env, "echo": e[:, pad:-pad], "r": r, "lat": lat[pad:-pad]}


def log_compress(env: np.ndarray, acq: Acquisition, ref: float | None = None) -> np.ndarray:
    """Envelope -> display values in [0, 1]: 20 log10 clipped to the dynamic range, the median echo at `acq.gain`."""
    ref = float(np.median(env.ravel()[::7])) if ref is None else ref  # a strided subsample's median is enough
    db = 20.0 * np.log10(np.maximum(env, 1e-12) / max(ref, 1e-12))
    out = np.clip((db + acq.gain * acq.dynamic_range_db) / acq.dynamic_range_db, 0.0, 1.0)
    return out ** acq.gamma if acq.gamma != 1.0 else out


def scan_coordinates(probe: Probe, layout: Layout, r: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel: (fractional polar indices [2, P] of the inside pixels, fan mask [H, W]).
    Cached for the last few geometries (frames of one patient share it); treat the result as read-only."""
    key = (astuple(probe), astuple(layout), len(r), float(r[-1]), len(lat), float(lat[0]), float(lat[-1]))
    hit = _COORD_CACHE.get(key)
    if hit is None:
        hit = _scan_coordinates(probe, layout, r, lat)
        if len(_COORD_CACHE) >= 8:
            _COORD_CACHE.pop(next(iter(_COORD_CACHE)))
        _COORD_CACHE[key] = hit
    return hit


_COORD_CACHE: dict = {}


def _scan_coordinates(probe: Probe, layout: Layout, r: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = layout.size
    x = layout.x0 + layout.spacing * np.arange(w, dtype=np.float64)
    zz = layout.z0 + layout.spacing * np.arange(h, dtype=np.float64)
    x, zz = np.meshgrid(x, zz)  # [H, W]
    if probe.sector:
        rad = np.hypot(x, zz + probe.apex_mm)
        rr, ll = rad - probe.apex_mm, np.arctan2(x, zz + probe.apex_mm)
    else:
        rr, ll = zz, x
    ext = probe.lateral_extent()
    mask = (rr >= 0) & (rr <= probe.depth_mm) & (np.abs(ll) <= ext)
    dr, dl = r[1] - r[0], lat[1] - lat[0]
    coords = np.stack([rr[mask] / dr, (ll[mask] - lat[0]) / dl]).astype(np.float32)
    return coords, mask


def scan_convert(polar: np.ndarray, coords: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bilinear polar -> Cartesian; zero outside the fan. polar [Nr, Nl] -> [H, W] float32."""
    out = np.zeros(mask.shape, np.float32)
    out[mask] = ndi.map_coordinates(polar, coords, order=1, mode="nearest")
    return out


def render(ph: Phantom, probe: Probe, rng: np.random.Generator, layout: Layout, acq: Acquisition | None = None,
           shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode frame: (display image [H, W] float32 in [0, 1], fan mask [H, W] bool)."""
    acq = acq or Acquisition()
    pol = simulate_polar(ph, probe, rng, layout.size, acq, shift)
    disp = log_compress(pol["env"], acq)
    coords, mask = scan_coordinates(probe, layout, pol["r"], pol["lat"])
    return scan_convert(disp, coords, mask), mask.copy()
