"""Seed study of the demo: `usjepa demo` with 3 pretraining seeds on the same data and probes (run once).

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--work DIR]     # about 5 minutes per seed on 2 CPU cores

Each seed runs the real CLI (`python -m usjepa.cli demo --train-seed K`, pinned CPU arithmetic), so seed 0 is
exactly the table a newcomer's `make demo` prints. `--train-seed` changes both pretraining stages and the
random-init encoder; the simulated data (`--seed 0`) and the probe splits stay fixed, so the spread across seeds is
the spread of pretraining. Writes results/demo_seeds.json and demo_seeds.md: the linear-probe test score of every
encoder x task per seed, mean ± std across seeds, and which orderings hold on every seed (the only ones the README
claims).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, md_table, write_json, write_markdown  # noqa: E402


def run_seed(work: Path, seed: int) -> tuple[pd.DataFrame, float]:
    """One demo run (resumes if its folder already finished); its linear full-data rows and its wall time."""
    out = work / f"train_seed{seed}"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "usjepa.cli", "demo", "--out", str(out), "--train-seed", str(seed)],
                   cwd=HERE.parent, check=True)
    df = pd.read_csv(out / "probe" / "results.csv")
    return df[(df["probe"] == "linear") & (df["setting"] == "full")], time.perf_counter() - t


def orderings(per_seed: dict[int, pd.DataFrame]) -> list[dict]:
    """For each task and encoder pair: is one encoder's score above the other's on every seed?"""
    rows = []
    first = next(iter(per_seed.values()))
    for task in sorted(first["task"].unique()):
        for a, b in combinations(sorted(first["encoder"].unique()), 2):
            diffs = []
            for df in per_seed.values():
                s = df[df["task"] == task].set_index("encoder")["mean"]
                diffs.append(float(s[a] - s[b]))
            holds = (f"{a} > {b}" if min(diffs) > 0 else f"{b} > {a}" if max(diffs) < 0 else "no ordering")
            rows.append({"task": task, "pair": f"{a} vs {b}", "min_diff": min(diffs), "max_diff": max(diffs),
                         "on_every_seed": holds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="runs/demo_seeds", help="one demo run folder per seed inside it")
    args = ap.parse_args()
    work = Path(args.work)
    per_seed, seconds = {}, {}
    for seed in args.seeds:
        per_seed[seed], seconds[seed] = run_seed(work, seed)
    table = []
    first = per_seed[args.seeds[0]]
    for task in sorted(first["task"].unique()):
        for enc in first["encoder"].unique():
            vals = [float(df[(df["task"] == task) & (df["encoder"] == enc)]["mean"].iloc[0])
                    for df in per_seed.values()]
            row = {"task": task, "encoder": enc, **{f"seed{s}": v for s, v in zip(args.seeds, vals)},
                   "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            table.append(row)
    order = orderings(per_seed)
    payload = {"machine": machine(), "seeds": args.seeds, "seconds_per_seed": seconds, "scores": table,
               "orderings": order,
               "command": "python benchmarks/demo_seeds.py --seeds " + " ".join(map(str, args.seeds)),
               "what": "linear probe, full data, test split: macro-F1 (lesion, organ) and R^2 (lesion_size); "
                       "each seed's value is the mean over the demo's 3 probe seeds"}
    write_json("demo_seeds", payload)
    md = ["# demo seed study", "", f"`{payload['command']}`: {payload['what']}. Pretraining seed varies; data and "
          "probe splits are fixed.", "", md_table(table, list(table[0])), "", "Orderings (one encoder above the "
          "other on every seed):", "", md_table(order, list(order[0])), "",
          "Seconds per seed: " + ", ".join(f"{s}: {v:.0f}" for s, v in seconds.items())]
    write_markdown("demo_seeds", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
