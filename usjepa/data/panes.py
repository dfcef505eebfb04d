"""Scanner exports in the item table: each file's layout is scanned once (cached), each pane of a multi-pane frame
becomes its own item (`data.panes=split`) and colour Doppler frames or panes follow `data.colour_frames`.

`expand_items(table, cfg, source)` -> (table with `pane`, `pane_boxes`, `scan_hw` and `colour` columns, skipped
rows); at load, `PaneView.cut` cuts a decoded frame to its pane (and grays Doppler colour) and `PaneView.region`
gives the region of what was cut, the same region `usjepa.data.layout` reports for that pane.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from usjepa.data.errors import BadItem, DataError
from usjepa.data.layout import Box, decolour, detect_layout, estimate_region, pane_region, regions_in
from usjepa.data.spec import COLOUR_FRAMES, DATA_SOURCES, PANES
from usjepa.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

SCAN_VERSION = 1  # bump when the layout rules change: cached scans are then redone
SKIP_REASON = "colour Doppler"
EXPANDED_COLUMNS = ("pane", "pane_boxes", "scan_hw", "colour")


def check_choices(cfg, where: str = "data") -> None:
    """data.panes and data.colour_frames are known values; ValueError naming the key otherwise."""
    for key, choices in (("panes", PANES), ("colour_frames", COLOUR_FRAMES)):
        v = getattr(cfg, key, choices[0])
        if v not in choices:
            raise ValueError(f"{where}.{key}='{v}' is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class PaneView:
    """What one item is of its frame: pane k of the scanned boxes (or the whole frame, pane -1) and its colour."""

    pane: int = -1
    boxes: tuple[Box, ...] = ()  # every pane of the frame, in the scan's pixel grid
    scan_hw: tuple[int, int] | None = None  # (H, W) of the grid the boxes were found in
    colour: str = ""  # "" | "colour-flow" | "power"

    def _scaled(self, hw: tuple[int, int]) -> list[Box]:
        """Boxes in the grid of a frame decoded at another size (JPEG draft decoding)."""
        if self.scan_hw is None or tuple(hw) == tuple(self.scan_hw):
            return list(self.boxes)
        sy, sx = hw[0] / self.scan_hw[0], hw[1] / self.scan_hw[1]
        return [(round(t * sy), round(b * sy), round(lft * sx), round(r * sx)) for t, b, lft, r in self.boxes]

    def box(self, hw: tuple[int, int]) -> Box | None:
        return self._scaled(hw)[self.pane] if self.pane >= 0 else None

    def cut(self, img: np.ndarray, colour_frames: str = "skip") -> np.ndarray:
        """The item's pixels: its pane of the frame; Doppler colour inpainted to gray when colour_frames=gray."""
        box = self.box(img.shape[:2])
        if box is not None:
            t, b, lft, r = box
            img = img[t:b, lft:r]
        if self.colour and colour_frames == "gray":
            img = decolour(img)
        return img

    def region(self, img: np.ndarray) -> np.ndarray:
        """Estimated scan region of what `cut` returned: the pane's region, the union of the frame's panes, or (not
        scanned) a fresh multi-pane estimate. -> bool [H, W]."""
        if self.pane >= 0:
            return pane_region(img)
        if self.boxes:
            return regions_in(img, self._scaled(img.shape[:2]))
        return estimate_region(img)


# ----------------------------------------------------------------------------- scanning


def _key(rec: dict) -> tuple[str, int]:
    """Frames of one DICOM / video share a layout: they are scanned once, at their first sampled frame."""
    return (rec["path"], -1) if rec["kind"] in ("dicom", "video") else (rec["path"], int(rec["frame"]))


def scan_frame(path: str, kind: str, frame: int) -> dict | None:
    """Layout of one frame as plain data: {"hw": [H, W], "panes": [[t, b, l, r, colour], ...]}; None if unreadable
    (the dataset reports it when it reads the item)."""
    from usjepa.data.sources import decode

    try:
        img = decode(path, kind, frame)
    except BadItem:
        return None
    return layout_record(img)


def layout_record(img: np.ndarray) -> dict:
    """The layout of a decoded frame as plain data (what scan_frame returns and the cache holds)."""
    lay = detect_layout(img, details=False)
    return {"hw": list(img.shape[:2]), "panes": [[*map(int, p.box), p.colour] for p in lay.panes]}


def _scan_job(job: tuple[str, str, int]) -> dict | None:
    return scan_frame(*job)


def _fingerprint(jobs: list[tuple[str, str, int]]) -> str:
    h = hashlib.sha1(f"layout-scan-v{SCAN_VERSION}".encode())
    for path, kind, frame in jobs:
        try:
            st = os.stat(path)
            h.update(f"{path}|{kind}|{frame}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    return h.hexdigest()[:20]


def scan_layouts(jobs: list[tuple[str, str, int]], workers: int = 1) -> list[dict | None]:
    """Layouts of (path, kind, frame) jobs, read from the cache when these files were scanned before (keyed by
    paths, sizes and modification times), else scanned (in `workers` processes) and cached."""
    from usjepa.data.build import cache_dir

    cache = cache_dir() / "layouts" / f"{_fingerprint(jobs)}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable layout cache %s: scanning again", cache)
    log.info("scanning the layout of %d frames (panes, colour Doppler); cached in %s", len(jobs), cache.parent)
    if workers > 1 and len(jobs) >= 64:  # below that, starting processes costs more than it saves
        import multiprocessing as mp

        with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
            out = pool.map(_scan_job, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        out = [_scan_job(j) for j in jobs]
    try:
        atomic_write_text(cache, json.dumps(out), fsync=False)  # a cache: a lost write costs a rescan
    except OSError as e:  # a read-only cache only costs a rescan next time
        log.warning("cannot write the layout cache %s: %s", cache, e)
    return out


# ----------------------------------------------------------------------------- expansion


def needs_scan(cfg, source: str) -> bool:
    """Generated (simulated) frames are single-pane B-mode; otherwise scan unless both features are off."""
    generated = source in DATA_SOURCES and DATA_SOURCES.fact(source, "generated", False)
    return not generated and (getattr(cfg, "panes", "split") == "split"
                              or getattr(cfg, "colour_frames", "skip") != "keep")


def item_rows(rec: dict, lay: dict | None, split: bool, policy: str, region_mode: str) -> tuple[list[dict], list[dict]]:
    """The item rows of one source row given its frame's scanned layout (None: not scanned or unreadable), and the
    skipped (colour Doppler) entries: one row per pane when `split`, else one for the whole frame."""
    if lay is None:
        return [{**rec, "pane": -1, "pane_boxes": (), "scan_hw": None, "colour": ""}], []
    boxes = tuple(tuple(p[:4]) for p in lay["panes"])
    colours = [p[4] for p in lay["panes"]]
    hw = tuple(lay["hw"])
    uses_mask = bool(rec.get("mask_path")) and region_mode in ("auto", "given")
    views = [(k, colours[k]) for k in range(len(boxes))] if split and len(boxes) > 1 and not uses_mask else \
        [(-1, next((c for c in colours if c), ""))]
    rows, skipped = [], []
    for k, colour in views:
        if colour and policy == "skip":
            skipped.append({"index": -1, "path": rec["path"], "kind": rec["kind"], "frame": int(rec["frame"]),
                            "pane": k, "reason": f"{SKIP_REASON} ({colour}); data.colour_frames=skip"})
            continue
        rows.append({**rec, "pane": k, "pane_boxes": boxes, "scan_hw": hw, "colour": colour})
    return rows, skipped


def expand_items(table: pd.DataFrame, cfg, source: str = "", workers: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    """One row per item: a multi-pane frame gives one row per pane (data.panes=split; rows with a mask file in use
    stay whole), each with the frame's labels, patient and split; Doppler frames / panes follow data.colour_frames
    (skip: left out and listed in the returned report). Adds columns pane, pane_boxes, scan_hw and colour."""
    check_choices(cfg)
    df = table.reset_index(drop=True)
    if set(EXPANDED_COLUMNS) <= set(df.columns):  # already one row per item (a dataset's own table)
        return df, []
    df = df.drop(columns=[c for c in EXPANDED_COLUMNS if c in df.columns])
    if not needs_scan(cfg, source) or df.empty:
        return df.assign(pane=-1, pane_boxes=[()] * len(df), scan_hw=[None] * len(df), colour=""), []
    split = getattr(cfg, "panes", "split") == "split"
    policy = getattr(cfg, "colour_frames", "skip")
    region_mode = getattr(cfg, "region", "auto")
    recs = df.to_dict("records")
    first: dict[tuple[str, int], tuple[str, str, int]] = {}
    for rec in recs:
        first.setdefault(_key(rec), (rec["path"], rec["kind"], max(int(rec["frame"]), 0)))
    keys = list(first)
    if workers <= 0:
        from usjepa.data.build import _usable_cpus

        workers = min(8, _usable_cpus())
    found = dict(zip(keys, scan_layouts([first[k] for k in keys], workers), strict=True))
    rows, skipped, n_split = [], [], 0
    for rec in recs:
        r, s = item_rows(rec, found.get(_key(rec)), split, policy, region_mode)
        rows += r
        skipped += s
        n_split += len(r) + len(s) > 1
    out = pd.DataFrame(rows, columns=list(df.columns) + list(EXPANDED_COLUMNS))
    if n_split or skipped:
        log.info("%d multi-pane frames split into their panes; %d colour Doppler frames / panes skipped "
                 "(data.colour_frames=skip): %d items from %d rows", n_split, len(skipped), len(out), len(df))
    if out.empty:
        raise DataError(f"all {len(skipped)} frames / panes are colour Doppler and data.colour_frames=skip left "
                        "nothing; set data.colour_frames=gray (colour inpainted) or keep")
    return out, skipped


def views_of(table: pd.DataFrame) -> list[PaneView]:
    """The PaneView of every row of an expanded table (whole, unscanned frames for rows without the columns)."""
    if "pane" not in table.columns:
        return [PaneView()] * len(table)
    seen: dict[PaneView, PaneView] = {}  # one shared object per distinct view: millions of items, few layouts
    out = []
    for p, b, hw, c in zip(table["pane"], table["pane_boxes"], table["scan_hw"], table["colour"], strict=True):
        v = PaneView(int(p), tuple(tuple(int(x) for x in bx) for bx in (b or ())),
                     tuple(int(x) for x in hw) if isinstance(hw, (tuple, list)) else None, str(c or ""))
        out.append(seen.setdefault(v, v))
    return out


def item_name(path: str, frame: int, pane: int) -> str:
    """A readable, file-name-safe item name: <stem>[_f<frame>][_p<pane>]."""
    name = Path(path).stem
    if frame >= 0:
        name += f"_f{frame}"
    if pane >= 0:
        name += f"_p{pane}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
