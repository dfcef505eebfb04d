"""Simulated, labelled B-mode datasets: `usjepa simulate --out DIR --n N --task TASK --seed S`.

Each simulated patient is one phantom (organ texture, optional lesion) seen by one probe; its frames differ by small
tissue motion, fresh speckle and slightly different scanner settings. Output: images/*.png, masks/*.png (fan masks),
and manifest.csv (written last, atomically) with labels, patient ids and a patient-grouped split.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from usjepa.data.sim.bmode import Acquisition, make_layout, render, sample_acquisition
from usjepa.data.sim.dressing import dress
from usjepa.data.sim.phantom import (
    LESION_SIZE,
    LESIONS,
    ORGANS,
    PROBES,
    Phantom,
    Probe,
    check_lesion_size,
    sample_phantom,
    sample_probe,
)
from usjepa.data.splits import make_patient_splits
from usjepa.io.atomic import atomic_write

log = logging.getLogger(__name__)

TASKS = {  # task -> (label column, class names, continuous target column)
    "lesion": ("lesion", LESIONS, "lesion_size_mm"),
    "organ": ("organ", ORGANS, "lesion_size_mm"),
    "size": ("lesion", LESIONS, "lesion_size_mm"),
    "echo": ("lesion", LESIONS, "lesion_echo_db"),
}
_IMBALANCED_ORGANS = (0.45, 0.2, 0.2, 0.15)  # organ shares outside the organ task: balancing has something to fix
_IMBALANCED_LESIONS = (0.4, 0.2, 0.2, 0.2)


def simulate_frame(seed: int | np.random.Generator, size: int | tuple[int, int] = 256, probe: str | Probe | None = None,
                   organ: str | None = None, lesion: str | None = None, dressed: bool = False,
                   phantom: Phantom | None = None, acq: Acquisition | None = None) -> dict:
    """One simulated frame. Returns image (uint8 [H, W], or [H, W, 3] when dressed), mask (bool [H, W] fan),
    overlay (bool [H, W] dressing pixels), clean (uint8 [H, W]), phantom, probe, layout."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    pr = probe if isinstance(probe, Probe) else sample_probe(rng, probe)
    ph = phantom or sample_phantom(rng, pr, organ or str(rng.choice(ORGANS)), lesion or str(rng.choice(LESIONS)))
    layout = make_layout(pr, hw, _margins(rng))
    img, mask = render(ph, pr, rng, layout, acq or sample_acquisition(rng))
    clean = np.round(img * 255).astype(np.uint8)
    out, overlay = (dress(clean, mask, pr, layout, rng) if dressed else (clean, np.zeros_like(mask)))
    return {"image": out, "mask": mask, "overlay": overlay, "clean": clean, "phantom": ph, "probe": pr,
            "layout": layout}


def _margins(rng: np.random.Generator) -> tuple[float, float, float]:
    return float(rng.uniform(0.06, 0.14)), float(rng.uniform(0.04, 0.1)), float(rng.uniform(0.04, 0.1))


def _patient(seed: int, p: int, n_frames: int, task: str, lesion: str, organ: str, size: tuple[int, int],
             probe: str | None, dress_prob: float, img_dir: Path, mask_dir: Path,
             lesion_size: tuple[float, float] = LESION_SIZE) -> list[dict]:
    """Simulate and write the frames of patient `p` (a pure function of (seed, p)); returns manifest rows."""
    rng = np.random.default_rng([seed, p, 0x5EED])
    pr = sample_probe(rng, probe)
    ph = sample_phantom(rng, pr, organ, lesion, lesion_size)
    layout = make_layout(pr, size, _margins(rng))
    base = sample_acquisition(rng)
    dressed = bool(rng.random() < dress_prob)
    text_seed = int(rng.integers(1 << 31))  # one exam, one set of burned-in text
    rows = []
    for f in range(n_frames):
        shift = (float(rng.normal(0, 1.0)), float(rng.normal(0, 0.7)), float(rng.normal(0, 0.02)))
        acq = replace(base, gain=float(np.clip(base.gain + rng.normal(0, 0.02), 0.3, 0.8)))
        img, mask = render(ph, pr, rng, layout, acq, shift)
        u8 = np.round(img * 255).astype(np.uint8)
        if dressed:
            u8, _ = dress(u8, mask, pr, layout, rng, text_seed=text_seed)
        name = f"p{p:06d}_f{f:02d}.png"
        Image.fromarray(u8).save(img_dir / name, compress_level=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / name, compress_level=1)
        les = ph.lesion
        rows.append({"path": f"images/{name}", "mask_path": f"masks/{name}", "patient_id": f"sim{seed}-p{p:06d}",
                     "frame": f, "lesion": les.kind, "organ": ph.organ, "lesion_size_mm": round(les.diameter_mm, 3),
                     "lesion_echo_db": round(les.echo_db, 3), "probe": pr.kind, "dataset": f"sim-{pr.kind}",
                     "depth_mm": round(pr.depth_mm, 2), "f0_mhz": round(pr.f0_mhz, 2), "dressed": int(dressed)})
    return rows


def _assign(rng: np.random.Generator, names: tuple, n: int, probs: tuple | None) -> list[str]:
    """Classes for n patients: exact shares (shuffled) so small datasets stay balanced."""
    p = np.full(len(names), 1 / len(names)) if probs is None else np.asarray(probs)
    counts = np.floor(p * n).astype(int)
    counts[np.argsort(-(p * n - counts))[: n - counts.sum()]] += 1
    out = np.repeat(np.arange(len(names)), counts)
    return [names[i] for i in rng.permutation(out)]


def simulate_dataset(out_dir: str | os.PathLike, n: int, task: str = "lesion", seed: int = 0, size: int = 256,
                     frames_per_patient: int = 4, probe: str | None = None, dress_prob: float = 0.5,
                     split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), workers: int = 1,
                     progress: bool = False, organ: str | None = None,
                     lesion_size: tuple[float, float] | list[float] | None = None) -> Path:
    """Write n simulated frames + fan masks + manifest.csv into out_dir; deterministic in (n, task, seed, options).

    The manifest is written last (temp file + rename), so a directory with a manifest is complete. An existing
    manifest is never overwritten. Returns the manifest path.
    """
    if task not in TASKS:
        raise ValueError(f"unknown simulator task '{task}'; use one of {sorted(TASKS)}")
    if organ is not None and organ not in ORGANS:
        raise ValueError(f"unknown organ '{organ}'; use one of {ORGANS} (or leave it unset for a mix)")
    if probe is not None and probe not in PROBES:
        raise ValueError(f"unknown probe '{probe}'; use one of {PROBES} (or leave it unset for a mix)")
    lesion_size = LESION_SIZE if lesion_size is None else check_lesion_size(lesion_size)
    if n < 1 or frames_per_patient < 1:
        raise ValueError(f"need n >= 1 and frames_per_patient >= 1, got n={n}, frames_per_patient={frames_per_patient}")
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    if manifest.exists():
        raise FileExistsError(f"{manifest} already exists; choose another --out or delete that dataset first")
    hw = (size, size)
    n_pat = -(-n // frames_per_patient)
    frames = [frames_per_patient] * (n_pat - 1) + [n - frames_per_patient * (n_pat - 1)]
    rng = np.random.default_rng([seed, 0xC1A55])
    lesions = _assign(rng, LESIONS, n_pat, None if task == "lesion" else _IMBALANCED_LESIONS)
    organs = _assign(rng, ORGANS, n_pat, None if task == "organ" else _IMBALANCED_ORGANS)
    if organ is not None:  # one tissue type: less nuisance variation around the lesion task
        organs = [organ] * n_pat
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(seed, p, frames[p], task, lesions[p], organs[p], hw, probe, dress_prob, out / "images", out / "masks",
             lesion_size) for p in range(n_pat)]
    if workers > 1:  # workers that never depend on SIGTERM, and an error instead of a hang (see data/pool.py)
        from usjepa.data.pool import starmap_bounded

        results = starmap_bounded(_patient, jobs, min(workers, len(jobs)), what=f"simulating into {out}")
    else:
        from tqdm import tqdm

        with tqdm(jobs, desc="simulate", unit="patient", disable=not progress) as it:
            results = [_patient(*j) for j in it]
    df = pd.DataFrame([r for rows in results for r in rows])
    col, names, target = TASKS[task]
    df["label"] = [names.index(v) for v in df[col]]
    df["label_name"] = df[col]
    df["target"] = df[target]
    df["task"] = task
    df["split"] = make_patient_splits(df["patient_id"].tolist(), split_fractions, seed)
    with atomic_write(manifest, "w") as f:
        df.to_csv(f, index=False)
    log.info("simulated %d frames of %d patients (task %s, seed %d) into %s", len(df), n_pat, task, seed, out)
    return manifest


def simulate_cached(root: str | os.PathLike, n: int, task: str, seed: int, **kw) -> Path:
    """Generate into `root` unless it already holds a manifest; safe when several processes race (tmp dir + rename)."""
    root = Path(root)
    if (root / "manifest.csv").exists():
        return root / "manifest.csv"
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        simulate_dataset(tmp, n, task, seed, **kw)
        try:
            os.rename(tmp, root)
        except OSError:  # someone else finished first (or root exists and is not empty)
            if not (root / "manifest.csv").exists():
                if root.exists() and not any(root.iterdir()):
                    root.rmdir()
                    os.rename(tmp, root)
                else:
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "manifest.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (images/, masks/, manifest.csv)")
    parser.add_argument("--n", type=int, default=512, help="number of frames")
    parser.add_argument("--task", default="lesion", choices=sorted(TASKS),
                        help="label of the `label` column: lesion type, organ texture; size/echo set `target`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--frames-per-patient", type=int, default=4)
    parser.add_argument("--probe", default=None, choices=PROBES, help="one probe geometry (default: a mix)")
    parser.add_argument("--dress-prob", type=float, default=0.5, help="share of patients with burned-in overlays")
    parser.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--lesion-size", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help=f"lesion diameter range as fractions of the imaging depth (default {LESION_SIZE[0]} "
                             f"{LESION_SIZE[1]})")
    parser.add_argument("--workers", type=int, default=1, help="processes")


def run_from_args(args: argparse.Namespace) -> int:
    from usjepa.errors import UsjepaError

    try:
        path = simulate_dataset(args.out, args.n, args.task, args.seed, args.size, args.frames_per_patient, args.probe,
                                args.dress_prob, tuple(args.split), args.workers, progress=True,
                                lesion_size=args.lesion_size)
    except ValueError as e:  # an argument out of range: the CLI prints it as one `error:` line
        raise UsjepaError(f"usjepa simulate: {e}") from None
    print(f"wrote {args.n} frames and {path}")
    return 0
