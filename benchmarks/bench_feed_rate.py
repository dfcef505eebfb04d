"""The feed rate: images/s one H100-class GPU consumes in the SALT recipe's step, and the loader workers that
takes with the current per-item data path.

FLOPs per image come from benchmarks/flops.py (teacher forward on every patch + 3 x (student forward on the
context + predictor forward on context and targets) per mask pair) with the recipe's mask statistics as
`usjepa masks configs/pretrain/salt_vitb16.yaml --batch B` reports them (the reference sampler truncates to the
batch minimum, so they depend on the per-GPU batch B). Students: ViT-B/16 with a ViT-B/16 teacher and ViT-L/16
with a ViT-L/16 teacher (SALT's pairing), the 12 x 384 predictor, 224 px. A GPU at a given MFU then consumes
MFU x peak / FLOPs-per-image images/s; the per-worker data rates are those of benchmarks/results/data.json.

    python benchmarks/bench_feed_rate.py                 # per-GPU batch 64, 40% MFU of an H100 SXM (989 TFLOP/s)
    python benchmarks/bench_feed_rate.py --batch 128 --mfu 0.5 --peak-tflops 756
    python benchmarks/bench_feed_rate.py --quick         # fewer mask batches
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import flops as F  # noqa: E402

RECIPE = "configs/pretrain/salt_vitb16.yaml"
STUDENTS = {"vit_base": "vit_base", "vit_large": "vit_large"}  # student -> teacher (SALT: ViT-L teaches all but B)
RECIPE_DATA_ROW = "PNG, fan mask file: decode+none+augment @224 (1 worker)"  # preprocess none, as the recipe
PREPARED_ROW = "export PNG 600x800: prepared shards, US-JEPA preset @224 (1 worker)"  # the data issue's shards


def mask_stats(batch: int, batches: int) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "usjepa.cli", "masks", RECIPE, "--batch", str(batch), "--batches", str(batches),
           "--json"]
    out = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout), f"usjepa masks {RECIPE} --batch {batch} --batches {batches} --json"


def per_image_flops(student: str, teacher: str, stats: dict) -> dict:
    pairs = [(p["context_tokens"]["mean"], [p["target_tokens_per_block"]["mean"]] * p["targets_per_image"])
             for p in stats["pairs"]]
    s = F.Encoder.preset(student)
    t = F.Encoder.preset(teacher)
    pred = F.PredictorSpec(s.width, t.width, width=384, depth=12, per_block=False)
    return F.salt_step_flops(s, t, pred, stats["tokens"], pairs)


def data_rates() -> tuple[list[dict], dict]:
    path = common.RESULTS / "data.json"
    if not path.exists():
        path = HERE / "results" / "data.json"
    data = json.loads(path.read_text())
    rows = [r for r in data["results"] if "(1 worker)" in r["what"]]
    return rows, data.get("machine", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="images per GPU per step (mask truncation acts on it)")
    ap.add_argument("--mfu", type=float, default=0.40)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM / H200: 989)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    stats, masks_cmd = mask_stats(args.batch, 4 if args.quick else 32)
    workers, data_machine = data_rates()
    rows = []
    for student, teacher in STUDENTS.items():
        parts = per_image_flops(student, teacher, stats)
        rate = args.mfu * args.peak_tflops * 1e12 / parts["total"]
        row = {"student": student, "teacher": teacher, "gflop_per_image": parts["total"] / 1e9,
               "teacher_share": parts["teacher_forward"] / parts["total"], "images_per_s_per_gpu": rate}
        for w in workers:
            key = w["what"].split(" @")[0].replace(": decode+", " ").replace("+augment", "")
            row[f"workers[{key}]"] = math.ceil(rate / w["images_per_s"])
        recipe = next((w for w in workers if w["what"] == RECIPE_DATA_ROW), None)
        if recipe:
            row["workers_recipe_path"] = math.ceil(rate / recipe["images_per_s"])
            row["workers_per_8gpu_node"] = 8 * row["workers_recipe_path"]
        prepared = next((w for w in workers if w["what"] == PREPARED_ROW), None)
        if prepared:
            row["workers_prepared_shards"] = math.ceil(rate / prepared["images_per_s"])
        rows.append(row)
        print(f"{student} (teacher {teacher}): {parts['total'] / 1e9:.1f} GFLOP/image -> {rate:,.0f} images/s per "
              f"GPU at {args.mfu:.0%} MFU; {row.get('workers_recipe_path', '?')} loader workers per GPU on the "
              "recipe's path")
    payload = {"machine": common.machine(), "recipe": RECIPE, "batch_per_gpu": args.batch, "mfu": args.mfu,
               "peak_tflops": args.peak_tflops, "mask_command": masks_cmd,
               "mask_pairs": [{"context_mean": p["context_tokens"]["mean"],
                               "target_mean": p["target_tokens_per_block"]["mean"]} for p in stats["pairs"]],
               "per_worker_images_per_s": {w["what"]: w["images_per_s"] for w in workers},
               "data_machine": data_machine, "rows": rows,
               # bench_data.py sizes its workers-per-GPU figures with this: the most demanding student's rate
               "images_per_s": max(r["images_per_s_per_gpu"] for r in rows),
               "command": "python benchmarks/bench_feed_rate.py" + (" --quick" if args.quick else "")}
    common.write_json("feed_rate", payload)
    pairs = ", ".join(f"{p['context_mean']:.1f} context + {p['target_mean']:.1f} target tokens"
                      for p in payload["mask_pairs"])
    md = ["# Feed rate: images/s one GPU consumes in the SALT step", "",
          f"Command: `{payload['command']}`. Masks: `{masks_cmd}` -> per pair {pairs} (of 196). "
          f"GPU: {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s dense bf16 (H100 SXM / H200); "
          f"{args.batch} images per GPU per step.", "",
          common.md_table(rows, ["student", "teacher", "gflop_per_image", "teacher_share", "images_per_s_per_gpu",
                                 "workers_recipe_path", "workers_per_8gpu_node", "workers_prepared_shards"]), "",
          "workers_recipe_path uses the per-item PNG row with preprocess none (the recipe's), "
          "workers_prepared_shards the prepared-shard row of 600x800 exports. Loader workers per GPU by data path "
          "(per-worker rates from results/data.json: `bench_data.py --quick` on "
          f"{data_machine.get('cpu', '?')} with 1 thread per worker, a busy shared machine, so rough; its per-item "
          "rows use the default augmentation policy and its prepared rows the US-JEPA preset, both heavier than the "
          "SALT recipe's crop + flip, so for the recipe these counts are upper bounds):", "",
          "| path | images/s per worker | " + " | ".join(f"{r['student']} workers" for r in rows) + " |",
          "|---|---|" + "---|" * len(rows)]
    for w in workers:
        md.append(f"| {w['what']} | {w['images_per_s']:.0f} | "
                  + " | ".join(str(math.ceil(r['images_per_s_per_gpu'] / w['images_per_s'])) for r in rows) + " |")
    common.write_markdown("feed_rate", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
