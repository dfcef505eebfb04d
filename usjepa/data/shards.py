"""The prepared-shard format (`usjepa data prepare` writes it, `data.source=prepared` reads it): one I/O module.

A shard folder holds, per shard k, `frames-k.npy` (1-D uint8: every item's preprocessed frame, [h, w] or [h, w, 3]
row-major, back to back), `regions-k.npy` (1-D uint8: every item's region mask, bit-packed along rows),
`items-k.parquet` (that shard's item rows) and `shard-k.json` (written last: the shard is complete); then
`prepared.json` (settings, the resolved data config, git commit, versions, counts), `bad_items.csv` and, last of
all, `index.parquet` (every item: source columns + shard, offset, height, width, channels, region_offset,
has_region). A frame is a slice of a memory map found by its offset: random access for exact resume and per-rank
sampling, no per-item files, and plain `.npy` / Parquet that numpy and pyarrow read without usjepa.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from usjepa.data.errors import DataError
from usjepa.data.spec import VIEW_VERSION
from usjepa.io.atomic import atomic_write

FORMAT = "usjepa-prepared"
VERSION = 1
FIRST_VIEW_VERSION = 2  # shards were first written under the view rules of VIEW_VERSION 2 (no key stored then)
# data.* keys that change what is stored (pixels, regions, which items exist): shards made with other values are
# refused by name. Augmentation keys (crop, flips, policy, resize) act at read time and may differ.
SETTINGS_KEYS = ("preprocess", "region", "channels", "panes", "colour_frames", "max_side", "frame_stride",
                 "max_frames")
STORAGE_COLUMNS = ("shard", "offset", "height", "width", "channels", "region_offset", "has_region")
META, INDEX, BAD = "prepared.json", "index.parquet", "bad_items.csv"


def shard_file(root: str | os.PathLike, kind: str, shard: int) -> Path:
    """frames / regions (.npy), items (.parquet) or shard (.json, the completion marker) of shard `shard`."""
    ext = {"frames": "npy", "regions": "npy", "items": "parquet", "shard": "json"}[kind]
    return Path(root) / f"{kind}-{shard:05d}.{ext}"


def is_tmp(name: str) -> bool:
    """A temp file of `usjepa.io.atomic` (`.NAME.tmp...`), left by a killed writer; the next run cleans it up."""
    return name.startswith(".") and ".tmp" in name


def resolved_max_side(data_cfg, img_size) -> int:
    """data.max_side, or (0) twice the larger model.img_size side: crops down to a quarter of the frame's area
    still come from at least img_size pixels."""
    side = int(getattr(data_cfg, "max_side", 0) or 0)
    return side if side > 0 else 2 * max(int(s) for s in img_size)


def settings_of(data_cfg, img_size) -> dict:
    """The stored-data settings of a data config (max_side resolved)."""
    out = {k: getattr(data_cfg, k) for k in SETTINGS_KEYS if k != "max_side"}
    out = {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else str(v))
           for k, v in out.items()}
    out["max_side"] = resolved_max_side(data_cfg, img_size)
    return {k: out[k] for k in SETTINGS_KEYS}


def differences(stored: dict, wanted: dict) -> list[str]:
    """'key: shards A, config B' for every settings key whose values differ."""
    return [f"data.{k}: shards {stored.get(k)!r}, config {wanted.get(k)!r}" for k in SETTINGS_KEYS
            if stored.get(k) != wanted.get(k)]


def read_meta(root: str | os.PathLike) -> dict:
    """prepared.json of a shard folder (DataError when absent, unreadable or of another format / version)."""
    path = Path(root) / META
    if not path.is_file():
        raise DataError(f"'{root}' holds no prepared shards ({META} missing); write them with "
                        "`usjepa data prepare CONFIG --out DIR` and set data.root to DIR")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; prepare the shards again into a new folder") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path} is {meta.get('format')} version {meta.get('version')}, this usjepa reads "
                        f"{FORMAT} version {VERSION}; prepare the shards again with this version")
    stored_view = meta.get("view_version", FIRST_VIEW_VERSION)
    if stored_view != VIEW_VERSION:
        raise DataError(f"{path} holds pixels made by the preprocessing rules of version {stored_view}; this usjepa "
                        f"makes version {VIEW_VERSION} (see VIEW_VERSION in usjepa/data/spec.py): prepare the shards "
                        "again with this version")
    return meta


def check_prepared(data_cfg, img_size) -> dict:
    """A finished shard folder (data.root) whose stored-data settings equal this config's; its metadata.
    DataError naming every differing key otherwise."""
    root = str(getattr(data_cfg, "root", "") or "")
    if not root:
        raise DataError("data.source=prepared needs data.root: the folder written by `usjepa data prepare`")
    meta = read_meta(root)
    if not (Path(root) / INDEX).is_file():
        raise DataError(f"'{root}' holds unfinished shards ({INDEX} missing): run the same `usjepa data prepare` "
                        "command again to finish them")
    diff = differences(meta.get("settings", {}), settings_of(data_cfg, img_size))
    if diff:
        raise DataError(f"the shards in '{root}' were prepared with other settings: {'; '.join(diff)}. Set these "
                        "keys to the shards' values, or prepare the data again with this config")
    return meta


# ----------------------------------------------------------------------------- writing


class _Discarded(Exception):
    """Thrown into an unfinished atomic write to drop its temp file."""


class _NpyStream:
    """A 1-D uint8 .npy written piece by piece: header, bytes, then the header again with the final length (the
    header's size does not depend on the length). Committed by an atomic rename."""

    def __init__(self, path: Path):
        self.path = path
        self._write = atomic_write(path, "wb")
        self.f = self._write.__enter__()
        self.start = self._header(0)
        self.n = 0

    def _header(self, n: int) -> int:
        self.f.seek(0)
        np.lib.format.write_array_header_1_0(self.f, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
        return self.f.tell()

    def append(self, arr: np.ndarray) -> int:
        """Write a uint8 array's bytes; returns their offset in the 1-D array."""
        off = self.n
        self.f.write(np.ascontiguousarray(arr, np.uint8).data)
        self.n += arr.size
        return off

    def commit(self) -> None:
        if self._header(self.n) != self.start:
            raise RuntimeError("npy header size changed")  # cannot happen with numpy's growth padding
        self._write.__exit__(None, None, None)  # flush, fsync, rename over `path`

    def discard(self) -> None:
        stop = _Discarded(self.path)
        self._write.__exit__(type(stop), stop, None)  # removes the temp file; `path` is untouched


def pack_region(mask: np.ndarray) -> np.ndarray:
    """bool [h, w] -> uint8 [h, ceil(w / 8)] (bits along rows)."""
    return np.packbits(mask, axis=1)


class ShardWriter:
    """Appends items (uint8 frame, optional region) to one shard's two .npy files."""

    def __init__(self, root: str | os.PathLike, shard: int):
        self.frames = _NpyStream(shard_file(root, "frames", shard))
        self.regions = _NpyStream(shard_file(root, "regions", shard))

    def add(self, frame: np.ndarray, region: np.ndarray | None) -> dict:
        """Storage columns of the item (offsets into this shard's arrays; region_offset -1: no region stored)."""
        h, w = frame.shape[:2]
        return {"offset": self.frames.append(frame), "height": h, "width": w,
                "channels": 1 if frame.ndim == 2 else frame.shape[2],
                "region_offset": -1 if region is None else self.regions.append(pack_region(region))}

    def commit(self) -> None:
        self.frames.commit()
        self.regions.commit()

    def discard(self) -> None:
        self.frames.discard()
        self.regions.discard()


# ----------------------------------------------------------------------------- reading


def _max_open_maps() -> int:
    """Open memory maps to keep per process (each holds a file descriptor): well under the descriptor limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    return int(max(8, min(512, (soft if soft > 0 else 1024) // 4)))


class ShardReader:
    """Frames and regions of a shard folder through memory maps opened lazily in each process (a DataLoader worker
    opens its own; pickling drops open maps), at most `_max_open_maps()` at once (least recently used closed)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._maps: OrderedDict = OrderedDict()
        self._pid = -1
        self._limit = _max_open_maps()

    def __getstate__(self) -> dict:
        return {"root": self.root, "_maps": OrderedDict(), "_pid": -1, "_limit": self._limit}

    def open_maps(self) -> int:
        """Maps this process holds now."""
        return len(self._maps) if self._pid == os.getpid() else 0

    def _map(self, kind: str, shard: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's maps
            self._maps, self._pid = OrderedDict(), os.getpid()
        key = (kind, shard)
        m = self._maps.get(key)
        if m is None:
            path = shard_file(self.root, kind, shard)
            try:
                m = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read shard file {path}: {e}; prepare the shards again") from e
            self._maps[key] = m
            if len(self._maps) > self._limit:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return m

    def frame(self, shard: int, offset: int, h: int, w: int, c: int) -> np.ndarray:
        """uint8 [h, w] or [h, w, c]: a read-only view into the shard's map."""
        n = h * w * c
        flat = self._map("frames", shard)[offset:offset + n]
        if flat.size != n:
            raise DataError(f"shard {shard} of '{self.root}' is shorter than its index says; prepare the shards "
                            "again")
        return flat.reshape((h, w) if c == 1 else (h, w, c))

    def region(self, shard: int, offset: int, h: int, w: int) -> np.ndarray:
        """bool [h, w]."""
        rb = (w + 7) // 8
        bits = self._map("regions", shard)[offset:offset + h * rb].reshape(h, rb)
        return np.unpackbits(bits, axis=1, count=w).view(bool)
