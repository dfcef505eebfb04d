"""`usjepa data prepare`: decode, pane / region estimation and preprocessing run once, in parallel, into shards
(format: usjepa.data.shards), so that training only crops, flips and jitters.

The source table is cut into chunks of `shard_rows` rows; chunk k becomes shard k, written by one worker process
to temporary names and renamed, `shard-k.json` last. A killed run redoes only shards without a valid json
(resumable); a finished folder whose plan (settings, table, file sizes and times) is unchanged is left untouched
(idempotent); a folder of other settings or data is refused, never overwritten; one run at a time holds a
folder (flock). Shards are written in parallel by usjepa.data.pool (forkserver workers that reset their signal
handlers, close + join, SIGKILL by handle past a grace time or when no shard arrives for a long while).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from usjepa.data import shards as fmt
from usjepa.data.dataset import item_region, preprocess_frame
from usjepa.data.errors import BadItem, DataError
from usjepa.data.panes import SCAN_VERSION, SKIP_REASON, PaneView, item_rows, layout_record, needs_scan
from usjepa.data.pool import starmap_bounded
from usjepa.data.sources import decode
from usjepa.data.spec import DATA_SOURCES, VIEW_VERSION
from usjepa.data.transforms import crop_resize
from usjepa.io.atomic import atomic_write_bytes
from usjepa.spec import plain

log = logging.getLogger(__name__)

PROBLEM_COLUMNS = ["path", "kind", "frame", "pane", "reason"]
LOCK = ".lock"  # held (flock) by the run writing a folder


@dataclass
class PrepareResult:
    out: Path
    status: str  # "prepared" | "up to date"
    items: int
    shards: int
    reused: int  # shards kept from an earlier, interrupted run
    problems: pd.DataFrame  # PROBLEM_COLUMNS: bad items and skipped (colour Doppler) frames / panes


# ----------------------------------------------------------------------------- one shard (runs in a worker)


def quantise(img: np.ndarray, region: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A preprocessed float image (and region) at most `max_side` on its longer side (antialiased bilinear /
    nearest, as the per-item path resizes) -> (uint8 image, region)."""
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        img, reg = crop_resize(img, region if region is not None else np.ones((h, w), bool), (0, 0, w, h), size)
        region = reg if region is not None else None
    u8 = np.rint(np.clip(img, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    return u8, region


def _stored_item(row: dict, frame: np.ndarray, d: SimpleNamespace, max_side: int):
    """(uint8 frame, stored region or None, has_region) of one item row, through the per-item path's own steps."""
    view = PaneView(int(row["pane"]), tuple(tuple(int(x) for x in b) for b in row["pane_boxes"]),
                    tuple(int(x) for x in row["scan_hw"]) if row["scan_hw"] is not None else None, str(row["colour"]))
    img = view.cut(frame, d.colour_frames)
    region = item_region(img, row["mask_path"], view, d.region, row["path"])
    img, kept = preprocess_frame(img, region, d.preprocess, d.channels)
    # plain US-JEPA drops the region for training (whole frame) but it is kept, aligned, for other uses
    stored = kept if kept is not None else region if d.preprocess == "usjepa" else None
    u8, reg = quantise(img, stored, max_side)
    return u8, reg, kept is not None


def _problem(row: dict, reason: str) -> dict:
    return {"path": str(row["path"]), "kind": str(row["kind"]), "frame": int(row["frame"]),
            "pane": int(row.get("pane", -1)), "reason": reason}


def _item_columns(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in ("pane_boxes", "scan_hw")}
    p = int(row["pane"])
    out["box"] = " ".join(map(str, row["pane_boxes"][p])) if p >= 0 else ""
    return out


def prepare_shard(job: dict) -> dict:
    """Write shard job["shard"] from its source rows; returns its summary (also written as shard-k.json)."""
    out, k, d = Path(job["out"]), int(job["shard"]), SimpleNamespace(**job["data"])
    last: list = [None, None]  # (path, frame) -> decoded frame or its BadItem: a frame's panes share one decode

    def frame_of(path: str, kind: str, frame: int) -> np.ndarray:
        frame = max(frame, 0)  # images: -1 and 0 are the one frame
        if last[0] != (path, frame):
            try:
                last[1] = decode(path, kind, frame)  # full resolution (the per-item path may draft-decode JPEG)
            except BadItem as e:
                last[1] = e
            last[0] = (path, frame)
        if isinstance(last[1], BadItem):
            raise last[1]
        return last[1]

    writer = fmt.ShardWriter(out, k)
    items, problems, layouts = [], [], {}
    try:
        for rec in job["rows"]:
            rec = dict(rec)
            scan_at = rec.pop("_scan_frame")
            lay = None
            if job["scan"]:
                key = (rec["path"], scan_at)
                if key not in layouts:
                    try:
                        layouts[key] = layout_record(frame_of(rec["path"], rec["kind"], scan_at))
                    except BadItem:
                        layouts[key] = None  # reported below, when its item is read
                    except Exception as e:  # a long job never dies on one bad image
                        layouts[key] = f"other (layout scan: {type(e).__name__}: {e})"
                lay = layouts[key]
                if isinstance(lay, str):
                    problems.append(_problem(rec, lay))
                    continue
            rows, skipped = item_rows(rec, lay, d.panes == "split", d.colour_frames, d.region)
            problems += [_problem(s, s["reason"]) for s in skipped]
            for row in rows:
                try:
                    frame = frame_of(row["path"], row["kind"], int(row["frame"]))
                    u8, reg, has_region = _stored_item(row, frame, d, int(job["max_side"]))
                except BadItem as e:
                    problems.append(_problem(row, e.reason))
                    continue
                except Exception as e:  # a long job never dies on one bad image
                    problems.append(_problem(row, f"other ({type(e).__name__}: {e})"))
                    continue
                items.append({**_item_columns(row), "shard": k, **writer.add(u8, reg), "has_region": has_region})
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    table = parquet_safe(pd.DataFrame(items, columns=job["columns"]))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write_bytes(fmt.shard_file(out, "items", k), buf.getvalue())
    summary = {"shard": k, "fingerprint": job["fingerprint"], "items": len(items), "problems": problems,
               "bytes": {kind: fmt.shard_file(out, kind, k).stat().st_size for kind in ("frames", "regions", "items")}}
    atomic_write_bytes(fmt.shard_file(out, "shard", k), json.dumps(summary, indent=1).encode())
    return summary


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding more than strings (ints beside names, None) become strings: Parquet needs one type."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object and not all(isinstance(v, str) for v in df[c]):
            df[c] = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in df[c]]
    return df


# ----------------------------------------------------------------------------- the plan


def _source_rows(table: pd.DataFrame) -> list[dict]:
    """Table records, each with `_scan_frame`: where its layout is scanned (a cine / video at its first sampled
    frame, as the per-item path scans it)."""
    recs = parquet_safe(table).to_dict("records")
    first: dict[str, int] = {}
    for rec in recs:
        f = max(int(rec["frame"]), 0)
        rec["_scan_frame"] = first.setdefault(rec["path"], f) if rec["kind"] in ("dicom", "video") else f
    return recs


def _fingerprints(chunks: list[list[dict]], settings: dict) -> list[str]:
    """One hash per chunk: format, settings, scan rules, its rows and the size and time of every file they read."""
    view = {} if VIEW_VERSION == fmt.FIRST_VIEW_VERSION else {"view": VIEW_VERSION}  # keeps older fingerprints
    head = json.dumps({"format": fmt.FORMAT, "version": fmt.VERSION, "scan": SCAN_VERSION, "settings": settings,
                       **view}, sort_keys=True).encode()
    stats: dict[str, str] = {}

    def stat(p: str) -> str:
        if p not in stats:
            try:
                st = os.stat(p)
                stats[p] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[p] = "missing"
        return stats[p]

    out = []
    for chunk in chunks:
        h = hashlib.sha1(head)
        for rec in chunk:
            h.update(json.dumps(rec, sort_keys=True, default=str).encode())
            h.update(f"|{stat(rec['path'])}|{stat(rec['mask_path']) if rec['mask_path'] else ''}\n".encode())
        out.append(h.hexdigest())
    return out


def _shard_done(out: Path, k: int, fingerprint: str) -> dict | None:
    """The summary of a complete shard k made from this plan, else None (it is redone)."""
    try:
        s = json.loads(fmt.shard_file(out, "shard", k).read_text())
        ok = s.get("fingerprint") == fingerprint and all(
            fmt.shard_file(out, kind, k).stat().st_size == n for kind, n in s["bytes"].items())
        return s if ok else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def run_shards(jobs: list[dict], workers: int, on_shard: Callable[[dict], None] | None = None,
               stall_s: float = 600.0) -> list[dict]:
    """prepare_shard for every job: in this process (workers <= 1), else in a usjepa.data.pool pool; summaries in
    shard order. `stall_s`: the longest wait for the next shard before the pool is declared stuck."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(prepare_shard(job))
            if on_shard:
                on_shard(out[-1])
        return out
    return starmap_bounded(prepare_shard, [(job,) for job in jobs], min(workers, len(jobs)), stall_s=stall_s,
                           what="usjepa data prepare", on_result=on_shard)


# ----------------------------------------------------------------------------- the command


def _problems_table(summaries: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([p for s in summaries for p in s["problems"]], columns=PROBLEM_COLUMNS)


def _write_index(out: Path, n_shards: int) -> int:
    parts = [pd.read_parquet(fmt.shard_file(out, "items", k)) for k in range(n_shards)]
    index = parquet_safe(pd.concat(parts, ignore_index=True))
    buf = io.BytesIO()
    index.to_parquet(buf, index=False)
    atomic_write_bytes(out / fmt.INDEX, buf.getvalue())
    return len(index)


def _check_out(out: Path, settings: dict, plan: str) -> dict | None:
    """The finished folder's metadata when it already holds this plan; DataError when it holds something else."""
    if (out / fmt.META).exists():
        meta = fmt.read_meta(out)
        diff = fmt.differences(meta.get("settings", {}), settings)
        if diff:
            raise DataError(f"'{out}' holds shards prepared with other settings ({'; '.join(diff)}); prepare into "
                            "a new folder (nothing was changed)")
        if (out / fmt.INDEX).exists():
            if meta.get("plan") == plan:
                return meta
            raise DataError(f"'{out}' holds finished shards of other data (the source table, or the size or time of "
                            "its files, changed since); prepare into a new folder, or delete this one first "
                            "(nothing was changed)")
    elif any(p.name != LOCK and not fmt.is_tmp(p.name) for p in out.iterdir()):
        raise DataError(f"--out '{out}' is not empty and holds no prepared shards; choose a new or empty folder")
    return None


def prepare(cfg, out_dir: str | os.PathLike, workers: int = 0, shard_rows: int = 8192,
            on_shard: Callable[[dict], None] | None = None) -> PrepareResult:
    """Prepare the data of a pretraining config (its `data` section at `model.img_size`) into shards in out_dir."""
    from usjepa.data.build import load_table

    data = cfg.data
    if DATA_SOURCES.fact(data.source, "prepared", False):
        raise DataError(f"data.source={data.source} is already prepared; give the config of the source data")
    if shard_rows < 1:
        raise DataError(f"--shard-rows must be >= 1, got {shard_rows}")
    out = Path(out_dir)
    settings = fmt.settings_of(data, cfg.model.img_size)
    table = load_table(data)
    recs = _source_rows(table)
    chunks = [recs[i:i + shard_rows] for i in range(0, len(recs), shard_rows)]
    prints = _fingerprints(chunks, settings)
    plan = hashlib.sha1("".join(prints).encode()).hexdigest()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out '{out}' is a file; give a folder")
    if out.is_dir() and not (out / fmt.META).exists():
        _check_out(out, settings, plan)  # refuse a folder of other files before putting a lock file into it
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        return _prepare_into(out, cfg, settings, table, recs, chunks, prints, plan, workers, shard_rows, on_shard)
    finally:
        lock.close()


def _lock(out: Path):
    """An exclusive lock on the folder for this run (DataError when another run holds it)."""
    f = open(out / LOCK, "a")
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock (not POSIX): one run per folder is then the user's care
        pass
    except OSError:
        f.close()
        raise DataError(f"another `usjepa data prepare` is writing into '{out}'; wait for it or use another "
                        "folder") from None
    return f


def _prepare_into(out: Path, cfg, settings: dict, table: pd.DataFrame, recs: list[dict], chunks: list[list[dict]],
                  prints: list[str], plan: str, workers: int, shard_rows: int,
                  on_shard: Callable[[dict], None] | None) -> PrepareResult:
    """prepare(), in a folder this run holds the lock of."""
    from usjepa.data.build import _usable_cpus
    from usjepa.io.provenance import git_info, package_versions

    data = cfg.data
    meta = _check_out(out, settings, plan)
    if meta is not None:
        bad = out / fmt.BAD
        problems = pd.read_csv(bad, keep_default_na=False) if bad.exists() else pd.DataFrame(columns=PROBLEM_COLUMNS)
        return PrepareResult(out, "up to date", int(meta["items"]), int(meta["shards"]), int(meta["shards"]),
                             problems)
    for p in out.iterdir():  # temp files of a killed run
        if fmt.is_tmp(p.name):
            p.unlink(missing_ok=True)
    meta = {"format": fmt.FORMAT, "version": fmt.VERSION, "view_version": VIEW_VERSION, "settings": settings,
            "plan": plan, "shard_rows": shard_rows, "source": data.manifest or data.root or data.source,
            "data": plain(data), "model_img_size": list(cfg.model.img_size),
            "git": {"commit": (g := git_info())["commit"], "dirty": bool(g["dirty_diff"])},
            "versions": package_versions(), "shards": len(chunks), "items": None}
    atomic_write_bytes(out / fmt.META, json.dumps(meta, indent=1).encode())
    columns = list(table.columns) + ["pane", "colour", "box", *fmt.STORAGE_COLUMNS]
    scan = needs_scan(data, data.source)
    d = {k: getattr(data, k) for k in ("preprocess", "region", "channels", "panes", "colour_frames")}
    summaries, jobs = {}, []
    for k, (chunk, fp) in enumerate(zip(chunks, prints, strict=True)):
        s = _shard_done(out, k, fp)
        if s is not None:
            summaries[k] = s
        else:
            jobs.append({"out": str(out), "shard": k, "rows": chunk, "fingerprint": fp, "data": d, "scan": scan,
                         "max_side": settings["max_side"], "columns": columns})
    reused = len(summaries)
    log.info("preparing %d source rows into %d shards in %s (%d done before)", len(recs), len(chunks), out, reused)
    # a worker that dies (out of memory) loses its shard: declared stuck after about 0.5 s per row of a shard
    for s in run_shards(jobs, workers if workers > 0 else _usable_cpus(), on_shard, max(600.0, 0.5 * shard_rows)):
        summaries[s["shard"]] = s
    for p in out.iterdir():  # shards of an earlier, longer plan of this unfinished folder
        parts = p.stem.split("-")
        if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= len(chunks) and not fmt.is_tmp(p.name):
            p.unlink()
    ordered = [summaries[k] for k in range(len(chunks))]
    problems = _problems_table(ordered)
    atomic_write_bytes(out / fmt.BAD, problems.to_csv(index=False).encode())
    n_items = sum(s["items"] for s in ordered)
    n_bad = int((~problems["reason"].str.startswith(SKIP_REASON)).sum())
    if n_bad > data.bad_item_threshold * max(n_items + n_bad, 1):
        raise DataError(f"{n_bad} of {n_items + n_bad} items are unreadable ({n_bad / (n_items + n_bad):.1%} > "
                        f"data.bad_item_threshold={data.bad_item_threshold}): see {out / fmt.BAD}. Fix or remove "
                        "those files and run again (finished shards are kept), or raise the threshold")
    if n_items == 0:
        raise DataError(f"no item of {meta['source']} could be prepared: see {out / fmt.BAD}")
    meta["items"] = n_items
    meta["problems"] = len(problems)
    atomic_write_bytes(out / fmt.META, json.dumps(meta, indent=1).encode())
    _write_index(out, len(chunks))  # last: the folder is finished
    return PrepareResult(out, "prepared", n_items, len(chunks), reused, problems)
