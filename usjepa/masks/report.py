"""The effective masking of a run, measured on masks drawn exactly as training draws them.

Per mask pair: context tokens per image (what the student sees), target tokens per block (what the predictor
predicts per block) and the masked share (1 - context / grid tokens), each as mean / min / max over every image
of every drawn batch. `usjepa masks` prints it; every run folder records it as masks.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usjepa.io.atomic import atomic_write_json
from usjepa.masks.collator import MaskBatch

REPORT_FILE = "masks.json"


def _summary(values: list[float] | np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def mask_statistics(batches: list[list[MaskBatch]], grid: tuple[int, int], **meta) -> dict:
    """batches[k][pair] as the collator returns them -> the report (a JSON-ready dict)."""
    n_tokens = int(grid[0] * grid[1])
    pairs = []
    for p in range(len(batches[0])):
        ctx, tgt = [], []
        for masks in batches:
            m = masks[p]
            B, T, Kt = m.targets.shape
            ctx.extend(m.context_valid.sum(1).tolist() if m.context_valid is not None else [m.context.shape[1]] * B)
            tgt.extend(m.targets_valid.sum(-1).flatten().tolist() if m.targets_valid is not None else [Kt] * (B * T))
        ctx_a = np.asarray(ctx, dtype=np.float64)
        pairs.append({
            "pair": p,
            "targets_per_image": int(batches[0][p].targets.shape[1]),
            "context_tokens": _summary(ctx_a),
            "target_tokens_per_block": _summary(tgt),
            "masked_share": _summary(1.0 - ctx_a / n_tokens),
        })
    images = sum(int(b[0].context.shape[0]) for b in batches)
    return {**meta, "grid": list(grid), "tokens": n_tokens, "batches": len(batches), "images": images, "pairs": pairs}


def format_report(stats: dict) -> str:
    """A small table for people: one row per mask pair and figure."""
    head = (f"masks: preset {stats.get('preset', '?')}, sampler {stats.get('sampler', '?')}, grid "
            f"{stats['grid'][0]}x{stats['grid'][1]} ({stats['tokens']} tokens), {stats['batches']} batches of "
            f"{stats.get('batch', '?')} images per rank ({stats['images']} images)")
    lines = [head, f"{'pair':>4}  {'figure':26s} {'mean':>8} {'min':>8} {'max':>8}"]
    for p in stats["pairs"]:
        rows = (("context tokens / image", p["context_tokens"], "{:8.1f}"),
                (f"target tokens / block (x{p['targets_per_image']})", p["target_tokens_per_block"], "{:8.1f}"),
                ("masked share", p["masked_share"], "{:8.1%}"))
        for name, s, fmt in rows:
            vals = " ".join(fmt.format(s[k]) for k in ("mean", "min", "max"))
            lines.append(f"{p['pair']:>4}  {name:26s} {vals}")
    return "\n".join(lines)


def write_report(stats: dict, run_dir: str | Path) -> Path:
    """masks.json in the run folder, written atomically."""
    path = Path(run_dir) / REPORT_FILE
    return atomic_write_json(path, stats, fsync=False)
