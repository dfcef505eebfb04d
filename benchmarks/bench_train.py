"""Train-step time, images/s and peak memory: SALT vs EMA-JEPA vs MAE at equal student size, SALT with a smaller
teacher, SALT from cached targets, and scaling with batch and image size.

Every variant runs the trainer's own step (`usjepa.train.step.train_step` + `apply_update`, objective built by
`usjepa.train.build.build_objective` from a config) on synthetic batches collated by the real mask collator, in a
fresh process so peak memory is its own. Data loading is measured separately (bench_data.py).

    python benchmarks/bench_train.py            # CPU suite (a few minutes on 2 cores)
    python benchmarks/bench_train.py --quick    # tiny models, seconds
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def child(spec: dict) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from usjepa.config import load_config
    from usjepa.masks import MaskCollator, build_masker
    from usjepa.train.build import build_objective
    from usjepa.train.loop import _param_groups
    from usjepa.train.placement import adamw_fused
    from usjepa.train.step import apply_update, train_step

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    cfg = load_config("configs/pretrain/tiny_sim.yaml", spec["overrides"] + ["teacher.family=random"])
    H, W = cfg.model.img_size
    B = cfg.data.batch_size
    images = torch.rand(B, 1, H, W)
    objective = build_objective(cfg, total_steps=1000)
    if spec.get("cached"):  # the same SALT objective, reading targets from a real cache instead of the teacher
        from teachers.cache import TargetCache

        objective.cache = TargetCache(_make_cache(cfg, images))
        objective.__dict__["teacher"] = None
    objective = objective.to(device)
    objective.train()
    grid = objective.student.grid((H, W))
    masker = build_masker(cfg.mask, grid)

    def base(items):
        return {
            "image": torch.stack([i["image"] for i in items]),
            "region": torch.stack([i["region"] for i in items]),
            "item_seed": torch.stack([i["item_seed"] for i in items]),
            "index": torch.stack([i["index"] for i in items]),
        }

    col = MaskCollator(masker, cfg.model.patch_size, base)
    items = [
        {
            "image": images[i],
            "region": torch.ones(H, W, dtype=torch.bool),
            "item_seed": torch.tensor(i),
            "index": torch.tensor(i),
        }
        for i in range(B)
    ]
    batch = col(items)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    batch["masks"] = [m.to(device) for m in batch["masks"]]
    groups = _param_groups(objective.trainable_modules())
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=adamw_fused(groups))  # as the trainer
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {"step": 0}

    def step():
        train_step(objective, [batch], params, 1.0, amp, device)
        state["step"] += 1
        apply_update(objective, opt, state["step"])

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = common.timeit(step, spec.get("warmup", 2), spec.get("iters", 5), sync)
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    n_ctx = float(
        np.mean(
            [
                int(m.context_valid.sum(1).float().mean()) if m.context_valid is not None else m.context.shape[1]
                for m in batch["masks"]
            ]
        )
    )
    res = {
        "name": spec["name"],
        **t,
        "images_per_s": B / t["median_s"],
        "peak_mem_mb": peak,
        "batch": B,
        "img": f"{H}x{W}",
        "student": cfg.model.arch,
        "objective": cfg.objective.name,
        "teacher": spec.get("teacher", ""),
        "context_tokens": n_ctx,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / 1e12 / t["median_s"],
        "device": str(device),
    }
    if device.type == "cuda":
        from flops import bf16_peak_tflops

        peak_tf = bf16_peak_tflops(torch.cuda.get_device_name(0))
        if peak_tf:
            res["mfu"] = res["achieved_tflops"] / peak_tf
    return res


class _Frames:
    """Fixed views of the synthetic batch, shaped like dataset items (the cache keys rows by item index)."""

    def __init__(self, images):
        self.images = images
        self.paths = [f"synthetic/{i}" for i in range(len(images))]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        import torch

        return {"image": self.images[i], "index": torch.tensor(i)}


def _make_cache(cfg, images) -> Path:
    """A real target cache (teachers.cache.build_cache) of the synthetic batch, float16 shards as users get."""
    from teachers.cache import build_cache, student_grid

    out = Path(tempfile.mkdtemp(prefix="usjepa-bench-cache-")) / "cache"
    return build_cache(cfg.teacher, cfg.data, tuple(cfg.model.img_size), out, cfg.objective.target_norm,
                       grid=student_grid(cfg), dataset=_Frames(images), progress=False, device="cpu")


def suite(quick: bool) -> list[dict]:
    if quick:
        size = [
            "model.arch=vit_tiny",
            "model.depth=4",
            "model.patch_size=8",
            "model.img_size=[64,64]",
            "data.batch_size=16",
            "predictor.depth=2",
            "predictor.embed_dim=96",
            "predictor.num_heads=4",
        ]
        small_t = ["teacher.arch=vit_tiny", "teacher.patch_size=8", "teacher.options.depth=2"]
        big, big_t = size, small_t
        scaling = []
    else:
        size = [
            "model.arch=vit_small",
            "model.depth=0",
            "model.patch_size=16",
            "model.img_size=[224,224]",
            "data.batch_size=8",
            "predictor.depth=6",
            "predictor.embed_dim=384",
            "predictor.num_heads=12",
        ]
        small_t = ["teacher.arch=vit_small", "teacher.patch_size=16"]
        big = [o.replace("vit_small", "vit_base") for o in size]
        big_t = ["teacher.arch=vit_small", "teacher.patch_size=16"]
        scaling = [(f"scale_batch{b}", [*size, f"data.batch_size={b}"]) for b in (4, 16)]
        scaling += [(f"scale_img{s}", [*size, f"model.img_size=[{s},{s}]"]) for s in (128, 160)]
    same_t = [t.replace("vit_small", size[0].split("=")[1]).replace("vit_tiny", size[0].split("=")[1]) for t in small_t]
    salt = ["objective.name=salt", "mask.preset=usjepa", "objective.loss=l1"]
    ema = ["objective.name=ema_jepa", "mask.preset=usjepa", "objective.loss=l1"]
    mae = [
        "objective.name=mae",
        "mask.preset=random",
        "objective.mae.decoder_dim=256",
        "objective.mae.decoder_depth=4",
        "objective.mae.decoder_heads=8",
    ]
    specs = [
        {"name": "salt_equal_teacher", "overrides": [*size, *salt, *same_t], "teacher": "same size"},
        {"name": "ema_jepa", "overrides": [*size, *ema], "teacher": "EMA copy"},
        {"name": "mae", "overrides": [*size, *mae], "teacher": "-"},
        {
            "name": "salt_cached_targets",
            "overrides": [*size, *salt, *same_t, "data.augment=false"],
            "cached": True,
            "teacher": "cache",
        },
        {"name": "salt_small_teacher_big_student", "overrides": [*big, *salt, *big_t], "teacher": "smaller"},
        {"name": "ema_jepa_big_student", "overrides": [*big, *ema], "teacher": "EMA copy"},
    ]
    specs += [{"name": n, "overrides": [*o, *salt, *same_t], "teacher": "same size"} for n, o in scaling]
    return specs


def main() -> None:
    args = common.child_or_args(__doc__, child)
    if args is None:
        return
    rows = []
    for spec in suite(args.quick):
        r = common.run_child(__file__, spec)
        print(
            f"{r['name']:32s} {r['median_s'] * 1000:9.1f} ms/step {r['images_per_s']:8.1f} img/s "
            f"{r['peak_mem_mb']:8.0f} MB"
        )
        rows.append(r)
    by = {r["name"]: r for r in rows}
    ratios = {
        "salt_vs_ema_equal": by["salt_equal_teacher"]["median_s"] / by["ema_jepa"]["median_s"],
        "salt_small_teacher_vs_ema": by["salt_small_teacher_big_student"]["median_s"]
        / by["ema_jepa_big_student"]["median_s"],
        "cached_vs_live_salt": by["salt_cached_targets"]["median_s"] / by["salt_equal_teacher"]["median_s"],
    }
    targets = {"salt_vs_ema_equal": 1.0, "salt_small_teacher_vs_ema": 0.8, "cached_vs_live_salt": 0.7}
    payload = {
        "machine": common.machine(),
        "quick": args.quick,
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "command": "python benchmarks/bench_train.py" + (" --quick" if args.quick else ""),
    }
    common.write_json("train", payload)
    md = [
        "# Train step benchmark",
        "",
        f"Machine: {payload['machine'].get('cpu')} / {payload['machine'].get('gpu', 'no GPU')}, "
        f"torch {payload['machine']['torch']}, {payload['machine']['threads']} threads.",
        f"Command: `{payload['command']}`",
        "",
        common.md_table(
            rows,
            [
                "name",
                "student",
                "teacher",
                "img",
                "batch",
                "median_s",
                "images_per_s",
                "peak_mem_mb",
                "achieved_tflops",
            ],
        ),
        "",
        "| ratio | measured | target | met |",
        "|---|---|---|---|",
    ]
    for k, v in ratios.items():
        md.append(f"| {k} | {v:.3f} | <= {targets[k]} | {'yes' if v <= targets[k] else 'no'} |")
    common.write_markdown("train", "\n".join(md) + "\n")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f} (target <= {targets[k]})")


if __name__ == "__main__":
    main()
