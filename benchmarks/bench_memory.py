"""Memory of a SALT step with and without activation checkpointing (ViT-S/16 student, 224 px, batch 8).

The step is the SALT recipe's at ViT-S scale: a frozen ViT-S/16 teacher (random weights, bf16 where the device
has bf16 units) encodes the whole image, the student (RoPE, no CLS) sees the context of both mask pairs of the
reference V-JEPA sampler (8 x 0.15 and 2 x 0.7, truncated to the batch minimum), a 12 x 384 predictor regresses
the teacher's tokens, L1 loss, backward. Each variant runs in a fresh process and reports:

- live_peak_mb: peak bytes of live tensors counted op by op (benchmarks/live_memory.py) over forward + backward;
  deterministic, the CPU analogue of torch.cuda.max_memory_allocated (parameters excluded, gradients included);
- kept_after_forward_mb: what the forward leaves alive for backward;
- rss_step_mb: how far a step raises the process's peak resident size above what the libraries, models and batch
  already held (allocator caching included; noisy);
- cuda_peak_mb on a GPU (torch.cuda.max_memory_allocated).

    python benchmarks/bench_memory.py            # ViT-S/16, 224 px, batch 8 (about a minute on 2 cores)
    python benchmarks/bench_memory.py --quick    # tiny models, seconds
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_REDUCTION = 0.40


def child(spec: dict) -> dict:
    import torch
    from live_memory import LiveTensorMemory

    from teachers import load as load_teacher
    from usjepa.masks import VJepaMultiBlock
    from usjepa.models import Predictor, apply_activation_checkpointing, build_vit
    from usjepa.objectives import SALT

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    img, patch, B = spec["img"], spec["patch"], spec["batch"]
    student = build_vit(spec["arch"], depth=spec.get("depth", 0), img_size=(img, img), patch_size=patch, in_chans=1,
                        cls_token=False, pos_embed="rope")
    width = student.embed_dim
    predictor = Predictor(width, width, embed_dim=spec["pred_dim"], depth=spec["pred_depth"],
                          num_heads=spec["pred_heads"], per_block=False, pos_embed="rope", zero_init_mask_tokens=True,
                          num_mask_tokens=2)
    teacher = load_teacher("random", arch=spec["arch"], depth=spec.get("depth", 0), patch_size=patch, in_chans=1,
                           img_size=[img, img], cls_token=False)
    objective = SALT(student, predictor, teacher).to(device).train()
    if spec["checkpointing"]:
        apply_activation_checkpointing(objective)
    grid = (img // patch, img // patch)
    masks = VJepaMultiBlock(grid)(list(range(B)))
    batch = {"image": torch.rand(B, 1, img, img, device=device), "index": torch.arange(B, device=device),
             "masks": [m.to(device) for m in masks]}

    def step():
        loss, _ = objective(batch)
        loss.backward()
        for p in objective.parameters():
            p.grad = None

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libraries, models, batch
    step()  # warm-up: lazily built tables and caches are not part of a step's memory
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with LiveTensorMemory() as mem:
        loss, _ = objective(batch)
        kept = mem.current_bytes
        loss.backward()
    seconds = time.perf_counter() - t
    res = {"name": spec["name"], "checkpointing": spec["checkpointing"], "student": spec["arch"], "img": img,
           "batch": B, "context_tokens": [int(m.context.shape[1]) for m in masks],
           "live_peak_mb": mem.peak_bytes / 2**20, "kept_after_forward_mb": kept / 2**20,
           "rss_step_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before,
           "step_s_with_counter": seconds, "device": str(device),
           "params_m": sum(p.numel() for p in objective.parameters()) / 1e6}
    if device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main() -> None:
    args = common.child_or_args(__doc__, child)
    if args is None:
        return
    if args.quick:
        base = dict(arch="vit_tiny", depth=4, img=64, patch=8, batch=4, pred_dim=96, pred_depth=2, pred_heads=4)
    else:
        base = dict(arch="vit_small", img=224, patch=16, batch=8, pred_dim=384, pred_depth=12, pred_heads=16)
    rows = []
    for ckpt in (False, True):
        spec = dict(base, name="checkpointed" if ckpt else "plain", checkpointing=ckpt)
        r = common.run_child(__file__, spec)
        print(f"{r['name']:13s} live peak {r['live_peak_mb']:8.1f} MB  kept {r['kept_after_forward_mb']:8.1f} MB  "
              f"rss step {r['rss_step_mb']:8.0f} MB")
        rows.append(r)
    plain, ckpt = rows
    reduction = {k: 1 - ckpt[k] / plain[k] for k in ("live_peak_mb", "kept_after_forward_mb", "rss_step_mb",
                                                       "cuda_peak_mb") if k in plain}
    payload = {"machine": common.machine(), "quick": args.quick, "rows": rows, "reduction": reduction,
               "target_reduction": TARGET_REDUCTION,
               "met": reduction["live_peak_mb"] >= TARGET_REDUCTION,
               "command": "python benchmarks/bench_memory.py" + (" --quick" if args.quick else "")}
    common.write_json("memory", payload)
    md = ["# Activation checkpointing: memory of a SALT step", "",
          f"Command: `{payload['command']}`; device {rows[0]['device']}; student {base['arch']} at {base['img']} px, "
          f"batch {base['batch']}, predictor {base['pred_depth']} x {base['pred_dim']}, context tokens per mask pair "
          f"{rows[0]['context_tokens']}.", "",
          common.md_table(rows, ["name", "live_peak_mb", "kept_after_forward_mb", "rss_step_mb",
                                 "step_s_with_counter"]), "",
          "| reduction | measured | target |", "|---|---|---|"]
    for k, v in reduction.items():
        md.append(f"| {k} | {v:.1%} | {'>= 40%' if k == 'live_peak_mb' else ''} |")
    md += ["", "live_peak_mb counts live tensors op by op (deterministic; parameters excluded, gradients included); "
           "rss_step_mb is the rise of the process's peak resident size during a step (allocator caches "
           "included) and moves with the machine."]
    common.write_markdown("memory", "\n".join(md) + "\n")
    for k, v in reduction.items():
        print(f"{k} reduction: {v:.1%}")


if __name__ == "__main__":
    main()
