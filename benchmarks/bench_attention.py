"""Attention kernels alone: math vs SDPA vs xformers across sequence lengths (forward + backward time, memory).

    python benchmarks/bench_attention.py [--quick]

On CPU, xformers is not run (its kernels need CUDA) and memory is the size of the attention inputs plus the
largest intermediate each path materialises (the math path holds the [B, H, N, N] score matrix); on CUDA it
is torch's peak allocation. Shapes follow ViT-S/16 (6 heads of 64).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from usjepa.models import attention as A  # noqa: E402


def measure(backend: str, B: int, H: int, N: int, Dh: int, device: torch.device, dtype, iters: int) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, Dh, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    fn = A._KERNELS[backend]

    def step():
        out = fn(q, k, v)
        out.float().sum().backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = common.timeit(step, 2, iters, sync)
    elem = torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:
        io = 4 * B * H * N * Dh * elem  # q, k, v, out
        scores = B * H * N * N * 4 if backend == "math" else 0  # fp32 softmax matrix
        mem = (io + scores) / 2**20
    return {"backend": backend, "tokens": N, "batch": B, "heads": H, "head_dim": Dh, "dtype": str(dtype),
            "median_ms": t["median_s"] * 1000, "mem_mb": mem, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = [64, 196] if args.quick else [49, 196, 576, 1024]
    B = 8 if device.type == "cpu" else 64
    backends = ["math", "sdpa"] + (["xformers"] if A._load_xformers() is not None else [])
    rows = []
    for N in lengths:
        for b in backends:
            r = measure(b, B, 6, N, 64, device, dtype, 3 if args.quick else 5)
            rows.append(r)
            print(f"{b:9s} N={N:5d} {r['median_ms']:9.2f} ms {r['mem_mb']:9.1f} MB")
    payload = {"machine": common.machine(), "rows": rows, "quick": args.quick,
               "note": "xformers rows appear only on CUDA machines" if "xformers" not in backends else "",
               "command": "python benchmarks/bench_attention.py" + (" --quick" if args.quick else "")}
    common.write_json("attention", payload)
    md = ["# Attention backends (forward + backward)", "", f"Command: `{payload['command']}`; device {device}.", "",
          common.md_table(rows, ["backend", "tokens", "batch", "heads", "dtype", "median_ms", "mem_mb"])]
    if payload["note"]:
        md += ["", payload["note"]]
    common.write_markdown("attention", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
