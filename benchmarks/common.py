"""Helpers shared by the benchmark scripts: machine description, timing, JSON + markdown output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from usjepa.io.atomic import atomic_write_json

RESULTS = Path(os.environ.get("USJEPA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
# USJEPA_BENCH_SMOKE=1 (the test suite's run of `run_all.py --quick`): the costliest parts run on their smallest
# case only, to check that every script runs and writes its results; its numbers are not the ones to quote.
SMOKE = os.environ.get("USJEPA_BENCH_SMOKE") == "1"


def machine() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info


def timeit(fn, warmup: int, iters: int, sync=None) -> dict:
    """Median / mean / min seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times), "n": iters}


def write_json(name: str, payload: dict) -> Path:
    return atomic_write_json(RESULTS / f"{name}.json", payload)


def write_markdown(name: str, text: str) -> Path:
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def child_or_args(doc: str, child: Callable[[dict], dict]) -> argparse.Namespace | None:
    """The options of a script that measures each setting in a fresh interpreter: `--quick`, and `--child SPEC`
    with which `run_child` starts it; a child runs `child(spec)`, prints its JSON row and gets None back."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    return args


def run_child(script: str, spec: dict) -> dict:
    """`script --child SPEC` in a fresh interpreter (see `child_or_args`): its row."""
    return run_isolated([script, "--child", json.dumps(spec)])


def run_isolated(argv: list[str], timeout: int = 1800) -> dict:
    """Run one measurement in a fresh interpreter (clean peak-memory reading); it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode:
        raise RuntimeError(f"benchmark child failed: {' '.join(argv)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def md_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
