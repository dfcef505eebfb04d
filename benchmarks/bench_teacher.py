"""Teacher cost: live forward (images/s) vs reading precomputed targets from the cache, and the SALT step time
with each. Prints a table and writes benchmarks/results/teacher.json.

    python benchmarks/bench_teacher.py            # ViT-B/16 teacher (URFM-sized) at 224 px, US-JEPA student
    python benchmarks/bench_teacher.py --quick    # tiny models, CPU-friendly, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import teachers
from teachers.cache import TargetCache, build_cache
from teachers.spec import TeacherConfig
from usjepa.data.spec import DataConfig


class Synthetic(torch.utils.data.Dataset):
    """Fixed random gray images (the teacher's cost does not depend on content)."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(1, self.size, self.size, generator=g), "index": i, "path": f"synthetic/{i}"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def salt_step_times(teacher, cache, batch: dict, args, device: torch.device) -> dict:
    """Median seconds of a full SALT step (student + predictor fwd/bwd + AdamW) with live vs cached targets."""
    from usjepa.masks import MultiBlockMasker, collate_masks
    from usjepa.models import Predictor, build_vit
    from usjepa.objectives import SALT

    student = build_vit(args.arch, img_size=(args.img, args.img), patch_size=16, in_chans=1).to(device)
    grid = student.grid((args.img, args.img))
    pred = Predictor(student.embed_dim, teacher.embed_dim, embed_dim=args.pred_dim, depth=args.pred_depth,
                     num_heads=args.pred_dim // 64 or 1).to(device)
    masker = MultiBlockMasker(grid=grid)
    rng = np.random.default_rng(0)
    masks = [m.to(device) for m in collate_masks([masker(rng) for _ in range(args.batch)])]
    batch = dict(batch, masks=masks)
    steps = {}
    for name, kw in (("live", dict(teacher=teacher)), ("cached", dict(teacher=None, cache=cache))):
        obj = SALT(student, pred, **kw).to(device)
        opt = torch.optim.AdamW([p for m in obj.trainable_modules().values() for p in m.parameters()], lr=1e-4)

        def step(obj=obj, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = obj(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up (allocations, kernel selection)
        steps[name] = step
    # interleaved, so that a change in machine load hits both variants alike
    times: dict[str, list[float]] = {"live": [], "cached": []}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(timed(step, 1, device, warmup=0))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models and images: a smoke run in seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="vit_base", help="teacher and student preset (vit_base = URFM-sized)")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--items", type=int, default=1024, help="items in the benchmark cache")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pred-dim", type=int, default=384)
    ap.add_argument("--pred-depth", type=int, default=12)
    results = Path(os.environ.get("USJEPA_BENCH_RESULTS") or Path(__file__).parent / "results")
    ap.add_argument("--out", default=str(results / "teacher.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.arch, args.img, args.batch, args.items, args.steps = "vit_tiny", 64, 8, 64, 3
        args.pred_dim, args.pred_depth = 96, 2
    device = torch.device(args.device)
    tcfg = OmegaConf.structured(TeacherConfig(family="random", arch=args.arch, patch_size=16,
                                              options={"img_size": [args.img, args.img]}))
    teacher = teachers.load_spec(tcfg).to(device)
    grid = teacher.grid((args.img, args.img))
    ds = Synthetic(args.items, args.img)
    images = torch.stack([ds[i]["image"] for i in range(args.batch)]).to(device)

    def live():
        h = teacher.tokens_on_grid(images, grid)
        return F.layer_norm(h, (h.shape[-1],))

    t_live = timed(live, args.steps, device)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "teacher": teacher.identity["arch"], "img": args.img, "batch": args.batch,
           "tokens": grid[0] * grid[1], "embed_dim": teacher.embed_dim,
           "teacher_bf16": teacher.runs_bf16(device),
           "live_ms_per_batch": round(1000 * t_live, 3), "live_images_per_s": round(args.batch / t_live, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_cache(tcfg, OmegaConf.structured(DataConfig), (args.img, args.img), tmp, "layernorm",
                    batch_size=args.batch, device=device, dataset=ds, progress=False)
        res["build_images_per_s"] = round(args.items / (time.perf_counter() - t0), 1)
        cache = TargetCache(tmp)
        res["cache_mb"] = round(sum(p.stat().st_size for p in Path(tmp).glob("shard_*.npy")) / 2**20, 1)
        gen = torch.Generator().manual_seed(0)

        def read():
            idx = torch.randint(0, args.items, (args.batch,), generator=gen)
            return cache.get(idx).to(device, non_blocking=True)

        t_read = timed(read, args.steps, device)
        res.update(cache_ms_per_batch=round(1000 * t_read, 3), cache_images_per_s=round(args.batch / t_read, 1),
                   read_speedup=round(t_live / t_read, 2))
        try:
            idx = torch.arange(args.batch)
            steps = salt_step_times(teacher, cache, {"image": images, "index": idx}, args, device)
            res.update(salt_step_ms_live=round(1000 * steps["live"], 2),
                       salt_step_ms_cached=round(1000 * steps["cached"], 2),
                       salt_step_saving_pct=round(100 * (1 - steps["cached"] / steps["live"]), 1))
        except Exception as e:  # the SALT pieces belong to other modules; report, do not hide the rest
            res["salt_step_error"] = f"{type(e).__name__}: {e}"
    res["note"] = ("cache reads come from a freshly written local file (page cache); a cold network file system "
                   "reads slower. The teacher runs under bf16 autocast wherever the device has bf16 units "
                   "(teacher.precision=auto); the student's step uses bf16 autocast on CUDA only.")
    for k, v in res.items():
        print(f"{k:>22}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
