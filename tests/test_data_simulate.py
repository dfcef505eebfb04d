"""Physics and dataset tests of the B-mode simulator."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from usjepa.data.errors import DataError
from usjepa.data.pool import starmap_bounded
from usjepa.data.sim.bmode import Acquisition, make_layout, render, scan_convert, scan_coordinates, simulate_polar
from usjepa.data.sim.phantom import Ellipse, Lesion, Phantom, Probe, sample_lesion, sample_probe
from usjepa.data.sim.simulate import add_arguments, run_from_args, simulate_dataset, simulate_frame

ROOT = Path(__file__).resolve().parents[1]

CURVED = Probe("curvilinear", depth_mm=120, angle_deg=70, apex_mm=30, f0_mhz=3.5, focus_mm=45, aperture_mm=20,
               psf_scale=1.5)
LINEAR = Probe("linear", depth_mm=45, width_mm=40, f0_mhz=8, focus_mm=20, aperture_mm=15)


def _lesion_phantom(echo: float, radius: float = 12.0) -> Phantom:
    shape = Ellipse(0.0, 60.0, radius, radius, echo=echo, soft_mm=0.3, att=1.0)
    return Phantom(organ="liver", lesion=Lesion("cyst", 2 * radius, 10 * np.log10(echo), shape))


@pytest.mark.parametrize("probe", [CURVED, LINEAR], ids=["curvilinear", "linear"])
def test_envelope_is_rayleigh_in_homogeneous_speckle(probe):
    pol = simulate_polar(Phantom(), probe, np.random.default_rng(0), (256, 256), attenuation=False, noise=False)
    env = pol["env"][20:-20, 10:-10].astype(np.float64)
    snr = env.mean() / env.std()
    assert abs(snr - 1.913) < 0.06, snr  # Rayleigh: sqrt(pi/2) / sqrt(2 - pi/2)


@pytest.mark.parametrize("echo", [0.01, 0.25])
def test_lesion_contrast_matches_configured_echogenicity(echo):
    probe = Probe("curvilinear", depth_mm=120, angle_deg=70, apex_mm=30, f0_mhz=3.5, focus_mm=60, aperture_mm=20)
    pol = simulate_polar(_lesion_phantom(echo), probe, np.random.default_rng(1), (256, 256), attenuation=False,
                         noise=False)
    rr, ll = np.meshgrid(pol["r"], pol["lat"], indexing="ij")
    x, z = probe.to_xz(rr, ll)
    dist = np.hypot(x, z - 60.0)
    band = np.abs(z - 60.0) < 10
    inside = dist < 12 - 3  # keep clear of the blurred edge
    outside = (dist > 12 + 4) & band & (np.abs(ll) < 0.5)
    power = pol["env"].astype(np.float64) ** 2
    contrast_db = 10 * np.log10(power[inside].mean() / power[outside].mean())
    assert abs(contrast_db - 10 * np.log10(echo)) < 1.5, contrast_db


@pytest.mark.parametrize("probe", [CURVED, LINEAR, Probe("phased", depth_mm=140, angle_deg=80, apex_mm=0.0)],
                         ids=["curvilinear", "linear", "phased"])
def test_fan_area_matches_analytic_sector(probe):
    layout = make_layout(probe, (256, 256))
    r = np.linspace(0, probe.depth_mm, 300)
    lat = np.linspace(-probe.lateral_extent(), probe.lateral_extent(), 200)
    _, mask = scan_coordinates(probe, layout, r, lat)
    expected = probe.fan_area_mm2() / layout.spacing ** 2
    assert abs(mask.sum() / expected - 1) < 0.02
    assert mask.sum() > 0.3 * mask.size  # the fan fills most of the frame


def _lateral_width(img: np.ndarray, mask: np.ndarray, rows: slice) -> float:
    """Mean lag (px) at which the horizontal autocorrelation of rows inside the fan falls below 0.5."""
    widths = []
    for y in range(rows.start, rows.stop):
        seg = img[y][ndi.binary_erosion(mask[y], iterations=4)]
        if len(seg) < 40:
            continue
        seg = seg - seg.mean()
        ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
        ac = ac / ac[0]
        k = int(np.argmax(ac < 0.5))  # first lag below 0.5; interpolate the crossing
        widths.append(k - 1 + (ac[k - 1] - 0.5) / (ac[k - 1] - ac[k]))
    return float(np.mean(widths))


def test_lateral_speckle_grows_with_depth_in_sector_images():
    rng = np.random.default_rng(2)
    layout = make_layout(CURVED, (256, 256))
    shallow, deep = [], []
    for _ in range(3):
        pol = simulate_polar(Phantom(), CURVED, rng, (256, 256), attenuation=False, noise=False)
        coords, mask = scan_coordinates(CURVED, layout, pol["r"], pol["lat"])
        env = scan_convert(pol["env"], coords, mask)
        rows = np.nonzero(mask.any(1))[0]
        top, h = rows[0], len(rows)
        shallow.append(_lateral_width(env, mask, slice(top + int(0.25 * h), top + int(0.35 * h))))
        deep.append(_lateral_width(env, mask, slice(top + int(0.75 * h), top + int(0.85 * h))))
    assert np.mean(deep) > 1.3 * np.mean(shallow), (shallow, deep)


def test_cyst_shows_posterior_enhancement_and_reflector_casts_shadow():
    probe = Probe("linear", depth_mm=60, width_mm=40, f0_mhz=7, focus_mm=30, aperture_mm=15)
    layout = make_layout(probe, (256, 256), (0.0, 0.0, 0.0))
    cyst = Ellipse(-10.0, 20.0, 5, 5, echo=0.01, att=0.05)
    stone = Ellipse(10.0, 20.0, 2, 2, echo=20.0, shadow_db=12.0)
    ph = Phantom(shapes=[stone], lesion=Lesion("cyst", 10, -20, cyst), alpha_db=0.7)
    acq = Acquisition(noise_db=-80, gamma=1.0)
    imgs = [render(ph, probe, np.random.default_rng(s), layout, acq)[0] for s in range(4)]
    img = np.mean(imgs, axis=0)
    xs = layout.x0 + layout.spacing * np.arange(256)
    zs = layout.z0 + layout.spacing * np.arange(256)
    rows = (zs > 35) & (zs < 50)

    def col(x):
        return img[np.ix_(rows, np.abs(xs - x) < 2)].mean()

    assert col(-10) > col(0) + 0.05  # brighter behind the cyst
    assert col(10) < col(0) - 0.05  # darker behind the stone


def test_dataset_is_deterministic_and_patient_grouped(tmp_path):
    a = simulate_dataset(tmp_path / "a", 12, "lesion", seed=3, size=64, frames_per_patient=3, dress_prob=0.5)
    b = simulate_dataset(tmp_path / "b", 12, "lesion", seed=3, size=64, frames_per_patient=3, dress_prob=0.5)
    c = simulate_dataset(tmp_path / "c", 12, "lesion", seed=4, size=64, frames_per_patient=3, dress_prob=0.5)
    da, db = pd.read_csv(a), pd.read_csv(b)
    pd.testing.assert_frame_equal(da, db)
    for p in da["path"]:
        assert (a.parent / p).read_bytes() == (b.parent / p).read_bytes()
    assert any((a.parent / p).read_bytes() != (c.parent / p).read_bytes() for p in da["path"])
    assert da.groupby("patient_id")["split"].nunique().max() == 1
    assert set(da["label"]) == {0, 1, 2, 3}  # 4 patients, one per lesion class
    assert (da.groupby("patient_id")["lesion"].nunique() == 1).all()
    for p, m in zip(da["path"], da["mask_path"], strict=True):
        img, mask = np.asarray(Image.open(a.parent / p)), np.asarray(Image.open(a.parent / m)) > 0
        gray = img if img.ndim == 2 else img.mean(2)
        assert gray[mask].mean() > 10 * max(gray[~ndi.binary_dilation(mask, iterations=3)].mean(), 1.0) or img.ndim == 3
    with pytest.raises(FileExistsError):
        simulate_dataset(tmp_path / "a", 12, "lesion", seed=3, size=64)


def test_frames_of_one_patient_share_the_phantom(tmp_path):
    from usjepa.data.sim.simulate import _patient

    def frames(p):
        d = tmp_path / str(p)
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        recs = _patient(0, p, 3, "lesion", "cyst", "liver", (96, 96), "linear", 0.0, d / "images", d / "masks")
        return [ndi.gaussian_filter(np.asarray(Image.open(d / r["path"]), float), 3) for r in recs]

    f1, f2 = frames(1), frames(2)
    same = np.corrcoef(f1[0].ravel(), f1[1].ravel())[0, 1]
    other = np.corrcoef(f1[0].ravel(), f2[0].ravel())[0, 1]
    assert not np.array_equal(f1[0], f1[1])
    assert same > other + 0.2, (same, other)


def test_cli_writes_a_labelled_dataset(tmp_path):
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path / "d"), "--n", "8", "--task", "organ", "--seed", "1", "--size", "64"])
    assert run_from_args(args) == 0
    df = pd.read_csv(tmp_path / "d" / "manifest.csv")
    assert len(df) == 8 and set(df["label_name"]) <= {"liver", "kidney", "muscle", "breast"}
    assert (df["label"] == df["organ"].map({"liver": 0, "kidney": 1, "muscle": 2, "breast": 3})).all()
    with pytest.raises(FileExistsError, match="manifest.csv already exists"):  # never overwrites a dataset
        run_from_args(args)


def test_simulate_frame_dressing_stays_outside_fan_except_calipers():
    f = simulate_frame(5, 128, probe="phased", organ="kidney", lesion="cyst", dressed=True)
    img, mask, ov = f["image"], f["mask"], f["overlay"]
    assert img.shape == (128, 128, 3) and ov[~mask].any()
    inside = ov & mask
    sat = img.max(2).astype(int) - img.min(2)
    assert (sat[inside] > 100).all()  # only coloured caliper marks sit inside the fan


def test_lesion_size_range_is_respected_and_checked():
    """Diameters follow the configured fraction of the depth (capped at 128 mm x hi); a bad range is refused."""
    rng = np.random.default_rng(0)
    for lo, hi in ((0.08, 0.25), (0.2, 0.4)):
        fracs = []
        for _ in range(200):
            probe = sample_probe(rng)
            les = sample_lesion(rng, probe, "solid_hypoechoic", (lo, hi))
            assert 3.0 - 1e-6 <= les.diameter_mm <= 128 * hi + 1e-6
            fracs.append(les.diameter_mm / probe.depth_mm)
        fracs = np.asarray(fracs)  # the 3 mm floor and the cap only move diameters inside [lo, hi] x depth
        assert fracs.min() >= lo - 1e-6 and fracs.max() <= hi + 1e-6 and fracs.max() - fracs.min() > (hi - lo) / 2
    small = [sample_lesion(np.random.default_rng(i), CURVED, "cyst").diameter_mm for i in range(50)]
    big = [sample_lesion(np.random.default_rng(i), CURVED, "cyst", (0.2, 0.4)).diameter_mm for i in range(50)]
    assert np.median(big) > 1.5 * np.median(small)
    for bad in ((0.3, 0.2), (0.0, 0.2), (0.1, 0.9), (0.1,)):
        with pytest.raises(ValueError, match="lesion size"):
            sample_lesion(rng, CURVED, "cyst", bad)


def test_dataset_options_reach_the_manifest(tmp_path):
    """lesion_size and split_fractions change what is written; the config key is validated with its name."""
    from usjepa.config import ConfigError, load_config

    m = simulate_dataset(tmp_path / "a", 40, "lesion", seed=1, size=64, frames_per_patient=1,
                         lesion_size=(0.3, 0.4), split_fractions=(0.5, 0.1, 0.4))
    df = pd.read_csv(m)
    sized = df[df["lesion"] != "normal"]
    assert (sized["lesion_size_mm"] / sized["depth_mm"]).between(0.3 - 0.01, 0.4 + 0.01).all()
    assert df["patient_id"].nunique() == 40 and 12 <= (df["split"] == "test").sum() <= 20
    with pytest.raises(ConfigError, match="data.sim_lesion_size"):
        load_config("configs/pretrain/tiny_sim.yaml", ["data.sim_lesion_size=[0.5,0.1]",
                                                       "objective.name=mae", "mask.preset=random"])


def test_parallel_simulation_writes_the_same_pixels(tmp_path):
    a = simulate_dataset(tmp_path / "a", 6, "lesion", seed=2, size=64, frames_per_patient=2, workers=1)
    b = simulate_dataset(tmp_path / "b", 6, "lesion", seed=2, size=64, frames_per_patient=2, workers=2)
    da, db = pd.read_csv(a), pd.read_csv(b)
    pd.testing.assert_frame_equal(da, db)
    for p in da["path"]:
        assert np.array_equal(np.asarray(Image.open(a.parent / p)), np.asarray(Image.open(b.parent / p))), p


# A job process as submitit / SLURM leave it: SIGTERM ignored, or trapped by a handler that only raises a flag.
_SIGTERM_PARENT = """
import signal, sys
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: None)
from usjepa.data.sim.simulate import simulate_dataset
simulate_dataset(sys.argv[1], 6, "lesion", seed=2, size=64, frames_per_patient=2, workers=3)
"""


@pytest.mark.slow
def test_parallel_simulation_never_hangs_under_a_parent_that_ignores_sigterm(tmp_path):
    """Forked workers of such a parent used to survive Pool.terminate() and hang the job for good (5 of 8 tries)."""
    serial = simulate_dataset(tmp_path / "serial", 6, "lesion", seed=2, size=64, frames_per_patient=2, workers=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for i, mode in enumerate(("ignore", "trap", "ignore", "trap")):
        out = tmp_path / f"run{i}"
        proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_PARENT, str(out), mode], env=env,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM would be ignored, like in the job
            proc.communicate()
            pytest.fail(f"try {i} ({mode}): parallel simulation hung under a SIGTERM-{mode} parent")
        assert proc.returncode == 0, log
        a, b = pd.read_csv(serial), pd.read_csv(out / "manifest.csv")
        pd.testing.assert_frame_equal(a, b)
        for p in a["path"]:
            assert np.array_equal(np.asarray(Image.open(serial.parent / p)), np.asarray(Image.open(out / p))), p


def _stuck(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_stalled_worker_pool_errors_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(DataError, match="no result for 2 s after 1 of 3 tasks"):
        starmap_bounded(_stuck, [(0.0,), (300.0,), (0.0,)], workers=1, stall_s=2.0, what="test pool")
    assert time.monotonic() - start < 60  # the stuck worker was killed, not waited for
    assert starmap_bounded(_stuck, [(0.0,), (0.01,)], workers=2) == [0.0, 0.01]  # results in order
