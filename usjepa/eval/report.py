"""Results of probe suites: an append-only row log, and the tables and chart rebuilt from it.

Every finished (encoder, task, probe, setting) appends one JSON line to `rows.jsonl` (a single
O_APPEND write, so parallel jobs of a job array can share a folder). `results.csv`, `results.md` and
`results.png` are rebuilt from the whole log and replace the old files atomically: a crashed or partial
run never leaves a truncated table behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from usjepa.io.atomic import atomic_write, atomic_write_bytes

log = logging.getLogger(__name__)

ROWS = "rows.jsonl"
KEY = ["encoder", "task", "probe", "setting", "protocol"]
COLUMNS = KEY + ["metric", "mean", "std", "ci_low", "ci_high", "n_seeds", "balanced_acc", "accuracy", "macro_auroc",
                 "pearson_r", "mae", "r2", "n_train", "n_val", "n_test", "selected", "encoder_kind", "encoder_id",
                 "protocol_hash", "seconds", "finished"]


def append_row(out_dir: str | Path, row: dict, name: str = ROWS) -> None:
    """Append one JSON line durably (one write call on an O_APPEND descriptor, then fsync)."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def load_rows(out_dir: str | Path, name: str = ROWS) -> list[dict]:
    """Every readable row of the log (a torn last line from a killed writer is skipped with a warning)."""
    path = Path(out_dir) / name
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping unreadable line %d of %s", i, path)
    return rows


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per key (the latest wins), in the canonical column order."""
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df = df.drop_duplicates(subset=KEY, keep="last")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]].reset_index(drop=True)


def _fmt(row: pd.Series) -> str:
    scale = 100.0 if row["metric"] in ("macro_f1", "accuracy", "balanced_acc") else 1.0
    digits = 1 if scale == 100 else 3
    s = f"{row['mean'] * scale:.{digits}f}"
    if row.get("n_seeds", 1) and row.get("n_seeds", 1) > 1 and np.isfinite(row["std"]):
        s += f" ± {row['std'] * scale:.{digits}f}"
    if np.isfinite(row.get("ci_low", np.nan)):
        s += f" [{row['ci_low'] * scale:.{digits}f}, {row['ci_high'] * scale:.{digits}f}]"
    if _not_converged(row):
        s += " †"
    return s


def _not_converged(row: pd.Series) -> bool:
    """A row whose selected linear head (of some seed) did not reach its optimum."""
    return str(row.get("selected_converged", "")) in ("False", "0", "0.0")


def markdown_tables(df: pd.DataFrame) -> str:
    """Encoders x tasks tables, one per protocol / probe / setting: mean ± std over seeds [95% bootstrap CI]."""
    if df.empty:
        return "# Probe results\n\n(no results yet)\n"
    lines = ["# Probe results", "",
             "Scores: macro-F1 (%) for classification, R^2 for regression; mean ± std over seeds, "
             "[95% bootstrap CI over test items]. Heads were selected on the validation split only.", ""]
    order = {"full": 0}
    for (protocol, probe), part in df.groupby(["protocol", "probe"], sort=False):
        settings = sorted(part["setting"].unique(), key=lambda s: (order.get(s, 1), s))
        for setting in settings:
            sub = part[part["setting"] == setting]
            tasks = list(dict.fromkeys(sub["task"]))
            encs = list(dict.fromkeys(sub["encoder"]))
            lines += [f"## {probe} probe, {setting} ({protocol})", "",
                      "| encoder | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
            for e in encs:
                cells = []
                for t in tasks:
                    r = sub[(sub["encoder"] == e) & (sub["task"] == t)]
                    cells.append(_fmt(r.iloc[0]) if len(r) else "")
                lines.append(f"| {e} | " + " | ".join(cells) + " |")
            lines.append("")
    if any(_not_converged(r) for _, r in df.iterrows()):
        lines += ["† no head of that grid reached its optimum within protocol.max_iter; the score is of the best "
                  "unconverged head (see details.jsonl, `convergence`).", ""]
    return "\n".join(lines)


def bar_chart(df: pd.DataFrame, path: Path) -> bool:
    """Grouped bars (tasks x encoders) of the full-data linear probe with CI whiskers; False when nothing to plot."""
    sub = df[(df["probe"] == "linear") & (df["setting"] == "full")]
    if sub.empty:
        return False
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, touches no global backend state

    tasks = list(dict.fromkeys(sub["task"]))
    encs = list(dict.fromkeys(sub["encoder"]))
    fig = Figure(figsize=(max(4.0, 1.2 * len(tasks) * max(1, len(encs)) / 2 + 2), 3.6))
    ax = fig.add_subplot(111)
    width = 0.8 / max(1, len(encs))
    for j, e in enumerate(encs):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(tasks):
            r = sub[(sub["encoder"] == e) & (sub["task"] == t)]
            if len(r):
                r = r.iloc[0]
                xs.append(i + (j - (len(encs) - 1) / 2) * width)
                ys.append(r["mean"])
                lo.append(max(0.0, r["mean"] - r["ci_low"]) if np.isfinite(r["ci_low"]) else 0.0)
                hi.append(max(0.0, r["ci_high"] - r["mean"]) if np.isfinite(r["ci_high"]) else 0.0)
        ax.bar(xs, ys, width=width, label=e, yerr=[lo, hi], capsize=2)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20)
    ax.set_ylabel("test score (macro-F1 / R^2)")
    ax.set_title("linear probe, full training set (95% bootstrap CI)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_write(path, mode=None, fsync=False) as tmp:  # the temp name has no suffix: name the format
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return True


def write_tables(out_dir: str | Path, plot: bool = True, notes: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Rebuild results.csv / results.md (/ results.png) from the row log; returns the table. `notes` (e.g. the
    datasets a run skipped) are added at the foot of results.md."""
    out_dir = Path(out_dir)
    df = results_frame(load_rows(out_dir))
    atomic_write_bytes(out_dir / "results.csv", df.to_csv(index=False).encode(), fsync=False)
    md = markdown_tables(df) + "".join(f"\n{n}\n" for n in notes)
    atomic_write_bytes(out_dir / "results.md", md.encode(), fsync=False)
    if plot:
        try:
            bar_chart(df, out_dir / "results.png")
        except Exception as e:  # a chart is a convenience; the tables are the result
            log.warning("could not draw results.png: %s", e)
    return df
