"""`make gpu-check`: prove the GPU path on one GPU in at most 8 minutes, then measure it.

1. Checks (benchmarks/cuda_checks.py, the same functions tests/test_cuda.py runs under pytest): attention kernels
   agree (math vs SDPA vs xformers when importable; forward and backward; dense, padded, packed; fp32 and bf16),
   a SALT forward + backward never synchronises with the host (CUDA sync debug mode set to error), a bf16 student
   step with fp32 master weights and fused AdamW, torch.compile of student / predictor / teacher against eager,
   activation checkpointing (same gradients, less memory), the `train.sharding=fsdp` step on a mesh of one (bf16
   gathers, fused AdamW on the shards, gathered checkpoint state that loads back exactly).
2. Measurements: the SALT recipe's ViT-B/16 step at 224 px with a ViT-B/16 teacher in bf16 (images/s, achieved
   TFLOP/s from the analytic FLOP count in benchmarks/flops.py, MFU against the GPU's dense bf16 peak, peak memory),
   eager / compiled x with / without activation checkpointing; attention kernels at 196 / 576 / 1024 tokens.
3. Writes benchmarks/results/gpu.json and gpu.md, prints what it skipped and why; exit status 1 when a check or a
   measurement failed. Without a GPU it says so and exits 0.

It imports torch, timm (through usjepa.models), numpy and this repository only: no config, data or launch layers,
so it runs on a node where the other dependencies are not installed yet (README: "GPU check").

    python benchmarks/gpu_check.py                      # on a GPU node
    python benchmarks/gpu_check.py --peak-tflops 989    # a GPU missing from the peak table in flops.py
    python benchmarks/gpu_check.py --plan               # imports everything it needs, prints the plan, runs nothing
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

BUDGET_S = 450  # leaves room for start-up and writing within 8 minutes
VARIANTS = [  # (name, compile, activation checkpointing, seconds it needs at least: compiles dominate)
    ("eager", False, False, 40),
    ("eager+ckpt", False, True, 40),
    ("compile", True, False, 150),
    ("compile+ckpt", True, True, 150),
]
ATTN_TOKENS = (196, 576, 1024)


class Run:
    """Collects results, skips and failures against one deadline."""

    def __init__(self, budget_s: float):
        self.t0 = time.time()
        self.deadline = self.t0 + budget_s
        self.checks: list[dict] = []
        self.steps: list[dict] = []
        self.attention: list[dict] = []
        self.skipped: list[str] = []
        self.failed: list[str] = []

    def left(self) -> float:
        return self.deadline - time.time()

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        print(f"  SKIP {what}: {why}", flush=True)


def dependencies() -> dict:
    """Which optional packages this node has (informational: xformers adds the xformers rows)."""
    out = {}
    for name in ("timm", "xformers", "numpy", "pytest", "omegaconf", "submitit"):
        try:
            out[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            out[name] = False
    return out


def gpu_peak(name: str, override: float | None) -> tuple[float | None, str]:
    from flops import bf16_peak_tflops

    if override:
        return override, "--peak-tflops / USJEPA_PEAK_TFLOPS"
    peak = bf16_peak_tflops(name)
    return peak, ("table in benchmarks/flops.py" if peak else "unknown GPU: pass --peak-tflops for MFU")


# ----------------------------------------------------------------------------- checks


def run_checks(run: Run, device, small: bool, skip: set[str]) -> None:
    import cuda_checks as C

    for name, fn in C.CHECKS.items():
        if name in skip:
            run.skip(f"check {name}", "turned off by --skip")
            continue
        if run.left() < 30:
            run.skip(f"check {name}", "time budget spent")
            continue
        t = time.time()
        row = {"check": name}
        try:
            row.update(status="pass", detail=fn(device, small=small))
        except C.Skip as e:
            row.update(status="skip", detail=str(e))
            run.skip(f"check {name}", str(e))
        except Exception as e:  # an assertion, an OOM, a compile error: recorded, the run goes on
            row.update(status="FAIL", detail=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=4))
            run.failed.append(f"check {name}")
        row["seconds"] = round(time.time() - t, 1)
        note = row["detail"].get("note", "") if isinstance(row["detail"], dict) else row["detail"]
        print(f"  {row['status']:4s} {name} ({row['seconds']} s) {note}", flush=True)
        run.checks.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- SALT step


def salt_step(variant: tuple, device, batch: int, steps: int, small: bool, peak_tflops: float | None) -> dict:
    import cuda_checks as C
    import salt_setup

    from usjepa.models import apply_activation_checkpointing

    name, use_compile, ckpt, _ = variant
    size = dict(student_arch="vit_tiny", teacher_arch="vit_tiny", img=64, patch=8, depth=2, teacher_depth=2,
                pred_depth=2, pred_width=64, pred_heads=4) if small else {}
    obj = salt_setup.build_salt(**size).to(device).train()
    if ckpt:
        apply_activation_checkpointing(obj)
    if use_compile:
        C.compile_parts(obj)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.04, fused=device.type == "cuda")
    batches = [salt_setup.draw_batch(obj, batch, 100 + i, device) for i in range(3)]  # 3 mask shapes, as in training
    flops = statistics.fmean(salt_setup.batch_flops(obj, b) for b in batches)
    amp = device.type == "cuda"

    def step(b):
        with C.autocast(device, amp):
            loss, _ = obj(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.time()
    for i in range(len(batches) + 1):  # compiles (and recompiles for the changing shapes) happen here
        step(batches[i % len(batches)])
    sync()
    warmup_s = time.time() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        sync()
        t = time.perf_counter()
        loss = step(batches[i % len(batches)])
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    row = {"variant": name, "compile": use_compile, "activation_checkpointing": ckpt, "batch": batch,
           "step_ms": step_s * 1e3, "images_per_s": batch / step_s, "tflops": flops / step_s / 1e12,
           "gflop_per_image": flops / batch / 1e9, "warmup_s": warmup_s, "loss": float(loss.detach()),
           "context_tokens": [[m.context.shape[1] for m in b["masks"]] for b in batches],
           "attention": obj.student.blocks[0].attn.backend}
    if peak_tflops:
        row["mfu"] = row["tflops"] / peak_tflops
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def run_steps(run: Run, device, batch: int, steps: int, small: bool, peak: float | None, skip: set[str]) -> None:
    for variant in VARIANTS:
        name, use_compile, _, need_s = variant
        if name in skip or (use_compile and "compile" in skip):
            run.skip(f"SALT step {name}", "turned off by --skip")
            continue
        if run.left() < need_s:
            run.skip(f"SALT step {name}", f"time budget: {run.left():.0f} s left, it needs about {need_s} s")
            continue
        try:
            row = salt_step(variant, device, batch, steps, small, peak)
            print(f"  {name:13s} {row['images_per_s']:9.1f} img/s  {row['tflops']:7.1f} TFLOP/s  "
                  f"MFU {row.get('mfu', float('nan')):.1%}  peak {row.get('peak_mem_gb', 0):.1f} GB  "
                  f"(warm-up {row['warmup_s']:.0f} s)", flush=True)
        except Exception as e:
            row = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            run.failed.append(f"SALT step {name}")
            print(f"  FAIL {name}: {row['error']}", flush=True)
        run.steps.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- attention kernels


def attention_kernels(run: Run, device, small: bool) -> None:
    from usjepa.models import attention as A
    from usjepa.models.layout import Segment, TokenLayout

    backends = {"math": A.math_attention, "sdpa": A.sdpa_attention}
    if device.type == "cuda" and A._load_xformers() is not None:
        backends["xformers"] = A.xformers_attention
    else:
        run.skip("attention xformers rows", "xformers needs CUDA" if device.type != "cuda" else "not importable")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    B, H, Dh = (2, 2, 16) if small else (32, 12, 64)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for N in ATTN_TOKENS if not small else (49, 64):
        # dense, and a padded batch (a quarter of the slots padding: what per-sample masks give)
        lengths = [N - (i * N) // (4 * B) for i in range(B)]
        valid = torch.arange(N)[None] < torch.tensor(lengths)[:, None]
        layouts = {"dense": TokenLayout(), "padded": TokenLayout.from_segments(
            [Segment(N, valid.to(device), lengths)], B, device)}
        for lname, layout in layouts.items():
            for name, kernel in backends.items():
                if run.left() < 10:
                    run.skip(f"attention {name} N={N} {lname}", "time budget spent")
                    continue
                q, k, v = (torch.randn(B, H, N, Dh, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

                def fwd_bwd(kernel=kernel, q=q, k=k, v=v, layout=layout):
                    kernel(q, k, v, layout).sum().backward()

                try:
                    for _ in range(2):
                        fwd_bwd()
                    times = []
                    for _ in range(3 if small else 10):
                        sync()
                        t = time.perf_counter()
                        fwd_bwd()
                        sync()
                        times.append(time.perf_counter() - t)
                    ms = statistics.median(times) * 1e3
                    flop = 3.5 * 4 * B * H * N * N * Dh  # forward 2 matmuls; backward 2.5 x forward
                    run.attention.append({"backend": name, "tokens": N, "layout": lname, "batch": B, "heads": H,
                                          "head_dim": Dh, "dtype": str(dtype).split(".")[-1], "fwd_bwd_ms": ms,
                                          "tflops": flop / ms / 1e9})
                except Exception as e:
                    run.failed.append(f"attention {name} N={N} {lname}")
                    run.attention.append({"backend": name, "tokens": N, "layout": lname,
                                          "error": f"{type(e).__name__}: {str(e)[:200]}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- report


def targets(run: Run) -> dict:
    """The issue's GPU targets, read off the measurements (None: not measured here, with why)."""
    out = {}
    best = max((r for r in run.steps if "mfu" in r), key=lambda r: r["mfu"], default=None)
    if best is not None:
        out["salt_vitb16_mfu_ge_40pct"] = {"measured": best["mfu"], "variant": best["variant"],
                                           "met": best["mfu"] >= 0.40}
    else:
        out["salt_vitb16_mfu_ge_40pct"] = {"measured": None, "met": None, "why": "no MFU (unknown peak or no step)"}
    rows = {(r["backend"], r["layout"]): r for r in run.attention if r.get("tokens") == 1024 and "fwd_bwd_ms" in r}
    if ("xformers", "dense") in rows and ("sdpa", "dense") in rows:
        x, s = rows[("xformers", "dense")]["fwd_bwd_ms"], rows[("sdpa", "dense")]["fwd_bwd_ms"]
        out["xformers_no_slower_than_sdpa_1024"] = {"xformers_ms": x, "sdpa_ms": s, "met": x <= s * 1.02}
    else:
        out["xformers_no_slower_than_sdpa_1024"] = {"met": None, "why": "xformers did not run"}
    return out


def markdown(payload: dict) -> str:
    sys.path.insert(0, str(HERE))
    from common import md_table

    m = payload["machine"]
    lines = ["# GPU check", "", f"Command: `{payload['command']}`; {m.get('gpu', 'no GPU')}, torch {m['torch']}, "
             f"CUDA {m.get('cuda')}; dense bf16 peak {payload['peak_tflops']} TFLOP/s ({payload['peak_source']}); "
             f"{payload['seconds']:.0f} s.", "", "## Checks", "",
             md_table([{**c, "detail": _short(c.get("detail"))} for c in payload["checks"]],
                      ["check", "status", "seconds", "detail"]), "",
             "## SALT step (ViT-B/16 student, ViT-B/16 teacher, 224 px, bf16)", "",
             md_table(payload["salt_step"], ["variant", "batch", "images_per_s", "step_ms", "tflops", "mfu",
                                             "peak_mem_gb", "warmup_s", "gflop_per_image", "error"]), "",
             "## Attention kernels (forward + backward)", "",
             md_table(payload["attention"], ["backend", "tokens", "layout", "batch", "heads", "dtype", "fwd_bwd_ms",
                                             "tflops", "error"]), "", "## Targets", ""]
    for k, v in payload["targets"].items():
        lines.append(f"- {k}: {json.dumps(v)}")
    lines += ["", "## Skipped", ""] + [f"- {s}" for s in payload["skipped"] or ["nothing"]]
    return "\n".join(lines) + "\n"


def _short(detail) -> str:
    if isinstance(detail, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in detail.items() if k != "errors")[:160]
    return str(detail)[:160]


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"wall-clock budget (default {BUDGET_S} s)")
    ap.add_argument("--batch", type=int, default=128, help="images per SALT step (default 128)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    ap.add_argument("--peak-tflops", type=float, default=float(os.environ.get("USJEPA_PEAK_TFLOPS") or 0),
                    help="dense bf16 peak for MFU when the GPU is not in the table")
    ap.add_argument("--skip", default="", help="comma list of checks / variants to leave out (e.g. compile)")
    ap.add_argument("--out", default="", help="results folder (default benchmarks/results)")
    ap.add_argument("--plan", action="store_true", help="import what a GPU run needs, print the plan, run nothing")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on the CPU (tests the script itself)")
    args = ap.parse_args(argv)
    print(f"gpu_check: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}", flush=True)
    deps = dependencies()
    print("  dependencies: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in deps.items()), flush=True)
    if args.plan:
        import cuda_checks  # noqa: F401  (imports usjepa.models, objectives, masks, teachers)
        import salt_setup  # noqa: F401

        print("  checks: " + ", ".join(cuda_checks.CHECKS))
        print("  SALT step variants: " + ", ".join(v[0] for v in VARIANTS) + f"; attention at {ATTN_TOKENS} tokens")
        return 0
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing was checked. "
              "Run `make gpu-check` on a GPU node.", flush=True)
        return 0
    if args.cpu_dry_run and not args.out:
        ap.error("--cpu-dry-run needs --out (its numbers are not GPU results)")
    device = torch.device("cuda" if not args.cpu_dry_run else "cpu")
    small = args.cpu_dry_run
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if small:
        skip |= {"compile"}  # inductor on a CPU takes minutes; tests/test_gpu_check.py runs the rest
    run = Run(args.budget_s)
    from common import machine

    mach = machine()
    peak, peak_source = gpu_peak(mach.get("gpu", ""), args.peak_tflops or None) if device.type == "cuda" else \
        (None, "CPU dry run")
    print("== checks", flush=True)
    run_checks(run, device, small, skip)
    print("== attention kernels", flush=True)
    attention_kernels(run, device, small)
    print("== SALT step", flush=True)
    run_steps(run, device, 4 if small else args.batch, 2 if small else args.steps, small, peak, skip)
    payload = {"machine": mach, "dependencies": deps, "peak_tflops": peak, "peak_source": peak_source,
               "checks": run.checks, "salt_step": run.steps, "attention": run.attention, "skipped": run.skipped,
               "failed": run.failed, "seconds": time.time() - run.t0,
               "command": "python benchmarks/gpu_check.py" + (" --cpu-dry-run" if small else "")}
    payload["targets"] = targets(run)
    out = Path(args.out) if args.out else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "gpu.md").write_text(markdown(payload))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} ({payload['seconds']:.0f} s)")
    for s in run.skipped:
        print(f"skipped: {s}")
    for f in run.failed:
        print(f"FAILED: {f}")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
