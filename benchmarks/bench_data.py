"""Data throughput: decode + preprocess + augment images/s per worker at 224 px for PNG, DICOM and the simulator,
simulator images/s per core at 256x256, and a 2-worker DataLoader feeding batches. Prints a table and writes
benchmarks/results/data.json.

    python benchmarks/bench_data.py            # 256 frames per source
    python benchmarks/bench_data.py --quick    # 48 frames per source, seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, md_table, write_json  # noqa: E402

from usjepa.data import DataConfig, build_dataset, collate_skip_bad  # noqa: E402
from usjepa.data.bmode import make_layout, render, sample_acquisition  # noqa: E402
from usjepa.data.phantom import LESIONS, ORGANS, sample_phantom, sample_probe  # noqa: E402
from usjepa.data.simulate import simulate_dataset  # noqa: E402

SIZE = (224, 224)


def _cine_dicom(path: Path, frames: np.ndarray) -> None:
    """An uncompressed multi-frame MONOCHROME2 DICOM holding frames [N, H, W] uint8."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = path.stem
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def items_per_s(ds, n: int) -> float:
    """Single-process (one worker) augmented items per second over n keys."""
    ds[(0, 0)]  # warm caches / imports
    t = time.perf_counter()
    for i in range(n):
        ds[(i % len(ds), 1000 + i)]
    return n / (time.perf_counter() - t)


def simulator_per_s(n: int, size: int = 256) -> float:
    """Frames per second of the B-mode physics + scan conversion on one core (no disk)."""
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n):
        pr = sample_probe(rng)
        ph = sample_phantom(rng, pr, ORGANS[i % 4], LESIONS[i % 4])
        jobs.append((pr, ph, make_layout(pr, (size, size)), sample_acquisition(rng)))
    t = time.perf_counter()
    for pr, ph, lay, acq in jobs:
        render(ph, pr, rng, lay, acq)
    return n / (time.perf_counter() - t)


def loader_per_s(ds, workers: int, batch: int, n_batches: int) -> float:
    """Images per second out of a DataLoader with `workers` processes (seeded keys, collate_skip_bad)."""
    keys = [[(int(k % len(ds)), int(k)) for k in range(b * batch, (b + 1) * batch)] for b in range(n_batches + 1)]
    dl = torch.utils.data.DataLoader(ds, batch_sampler=keys, num_workers=workers, collate_fn=collate_skip_bad,
                                     prefetch_factor=4 if workers else None)
    it = iter(dl)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = sum(b["image"].shape[0] for b in it)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames (seconds)")
    ap.add_argument("--n", type=int, default=0, help="frames per source (default 256, quick 48)")
    args = ap.parse_args()
    n = args.n or (48 if args.quick else 256)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        simulate_dataset(tmp / "png", n, "lesion", seed=0, size=256, dress_prob=0.5)
        write_s = n / (time.perf_counter() - t)
        rows.append({"what": "simulate + dress + write PNG (256x256)", "images_per_s": write_s})
        rows.append({"what": "simulator physics (256x256, per core)", "images_per_s": simulator_per_s(n)})
        from PIL import Image

        pngs = sorted((tmp / "png" / "images").glob("*.png"))
        frames = np.stack([np.asarray(Image.open(p).convert("L")) for p in pngs[:32]])
        (tmp / "dcm").mkdir()
        for k in range(max(1, n // 32)):
            _cine_dicom(tmp / "dcm" / f"cine{k}.dcm", frames)
        manifest = str(tmp / "png" / "manifest.csv")
        for pre in ("none", "usjepa"):
            sets = {"PNG, fan mask file": DataConfig(source="manifest", manifest=manifest, preprocess=pre),
                    "PNG, fan estimated": DataConfig(source="manifest", manifest=manifest, preprocess=pre,
                                                     region="estimate"),
                    "DICOM cine, fan estimated": DataConfig(source="dicom", root=str(tmp / "dcm"), preprocess=pre,
                                                            task="none")}
            for name, cfg in sets.items():
                ds = build_dataset(cfg, None, SIZE, augment=True)
                rows.append({"what": f"{name}: decode+{pre}+augment @224 (1 worker)",
                             "images_per_s": items_per_s(ds, n)})
        png = build_dataset(DataConfig(source="manifest", manifest=str(tmp / "png" / "manifest.csv"),
                                       preprocess="usjepa"), None, SIZE, augment=True)
        rows.append({"what": "PNG usjepa DataLoader, 2 workers, batch 32 @224",
                     "images_per_s": loader_per_s(png, 2, 32, max(2, n // 32))})
    print(md_table(rows, ["what", "images_per_s"]))
    out = write_json("data", {"machine": machine(), "frames_per_source": n, "img_size": list(SIZE), "results": rows,
                              "note": "per-worker numbers are single-process; torch threads = 1"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
