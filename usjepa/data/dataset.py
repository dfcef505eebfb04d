"""One torch Dataset for every source: decode -> region mask -> preprocess -> geometry -> photometric -> tensors.

`ds[i]` is deterministic (no augmentation); `ds[(i, item_seed)]` draws its augmentation from item_seed only. A bad
item (missing, empty, corrupt, truncated, all-black) returns None, is logged once and counted in a table shared with
DataLoader workers; more than `bad_item_threshold` of the dataset bad raises DataError.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from usjepa.data.errors import BadItem, DataError
from usjepa.data.panes import PaneView, expand_items, views_of
from usjepa.data.preprocess import percentile_rescale, region_bbox, remove_overlays, to_gray
from usjepa.data.sim.phantom import LESIONS, ORGANS
from usjepa.data.sources import decode, read_mask
from usjepa.data.transforms import augment_geometry, photometric, resize_full

log = logging.getLogger(__name__)

SIM_CLASS_ORDER = {"lesion": LESIONS, "organ": ORGANS}
REASONS = ("", "missing file", "empty file", "truncated file", "corrupt or unreadable", "all-black frame",
           "blank frame", "frame out of range", "bad mask", "other")


def _reason_code(reason: str) -> int:
    for i, r in enumerate(REASONS[1:-1], start=1):
        if reason.startswith(r.split(" ")[0]) and r.split(" ")[1] in reason:
            return i
    return len(REASONS) - 1


def resolve_labels(df: pd.DataFrame, task: str) -> tuple[np.ndarray | None, list[str], np.ndarray]:
    """(labels int64 or None, class names, targets float32) from the table and the task / label column name."""
    targets = pd.to_numeric(df["target"], errors="coerce").to_numpy(np.float32) if "target" in df else \
        np.full(len(df), np.nan, np.float32)
    col = task if task in df.columns and task not in ("target",) else "label_name" if task == "folder" else "label"
    if col not in df.columns:
        return None, [], targets
    vals = df[col]
    if pd.api.types.is_float_dtype(vals) and not np.all(np.isnan(vals) | (vals == np.round(vals))):
        targets = vals.to_numpy(np.float32)  # a continuous column: it is the regression target
        col = "label"
        if col not in df.columns:
            return None, [], targets
        vals = df[col]
    pairs = None
    if "label" in df.columns and "label_name" in df.columns and col in ("label", "label_name") or \
            ("label_name" in df.columns and (df["label_name"].astype(str) == vals.astype(str)).all()):
        pairs = df[["label", "label_name"]].dropna() if "label" in df.columns else None
    if pairs is not None and len(pairs) and pd.api.types.is_numeric_dtype(pairs["label"]):
        labels = pd.to_numeric(df["label"], errors="coerce").fillna(-1).to_numpy(np.int64)
        k = int(labels.max()) + 1 if (labels >= 0).any() else 0
        names = {int(a): str(b) for a, b in zip(pairs["label"], pairs["label_name"], strict=True)}
        return (labels if k else None), [names.get(i, str(i)) for i in range(k)], targets
    if pd.api.types.is_numeric_dtype(vals):
        labels = pd.to_numeric(vals, errors="coerce").fillna(-1).to_numpy(np.int64)
        k = int(labels.max()) + 1 if (labels >= 0).any() else 0
        return (labels if k else None), [str(i) for i in range(k)], targets
    s = vals.fillna("").astype(str)
    names = sorted(v for v in s.unique() if v)
    if "task" in df.columns and col in SIM_CLASS_ORDER and set(names) <= set(SIM_CLASS_ORDER[col]):
        names = list(SIM_CLASS_ORDER[col])  # a simulator manifest: its canonical class order for every task
    if not names:
        return None, [], targets
    lut = {n: i for i, n in enumerate(names)}
    return np.asarray([lut.get(v, -1) for v in s], np.int64), names, targets


def item_region(img: np.ndarray, mask_path: str, view: PaneView, mode: str, path: str = "") -> np.ndarray | None:
    """An item's region (fan) mask per data.region: its mask file (auto / given), else estimated for its pane
    (auto / estimate); None for data.region=none or given without a file."""
    if mode == "none":
        return None
    if mask_path and mode in ("auto", "given"):
        try:
            m = read_mask(mask_path)
        except Exception as e:
            raise BadItem(f"bad mask {mask_path}: {e}", path) from e
        if m.shape != img.shape[:2]:
            from PIL import Image

            m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize(img.shape[1::-1], Image.NEAREST)) > 0
        return m
    if mode in ("auto", "estimate"):
        return view.region(img)  # its pane's region, or the union of the frame's panes
    if mode == "given":
        return None
    raise ValueError(f"data.region must be auto, given, estimate or none, got '{mode}'")


def preprocess_frame(img: np.ndarray, region: np.ndarray | None, preprocess: str, channels: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """data.preprocess on a decoded item: (image float32 [H, W] or [H, W, 3], region or None: whole frame)."""
    if preprocess in ("fan", "usrc"):
        img = remove_overlays(img, region)  # gray, overlays outside the fan zeroed, colour marks inpainted
        if region is not None:
            t, b, lft, r = region_bbox(region)
            img, region = img[t:b, lft:r], region[t:b, lft:r]
        if preprocess == "usrc":
            img = percentile_rescale(img, region)
    elif preprocess == "usjepa":  # plain US-JEPA keeps the whole frame; the fan only sets the percentiles
        img = percentile_rescale(remove_overlays(img, None), region, keep_outside=True)
        region = None  # crops, flips and photometric ops act on the whole frame
    elif preprocess != "none":
        raise ValueError(f"data.preprocess must be none, fan, usjepa or usrc, got '{preprocess}'")
    if channels == 1 and img.ndim == 3:
        img = to_gray(img)
    return img, region


class UltrasoundDataset(torch.utils.data.Dataset):
    """Items of a normalised source table (see usjepa.data.sources.COLUMNS) through the configured pipeline."""

    def __init__(self, table: pd.DataFrame, cfg, img_size: tuple[int, int], augment: bool, seed: int = 0,
                 source: str = "", class_names: list[str] | None = None):
        self.table, self.skipped = expand_items(table, cfg, source)  # one row per pane; Doppler per colour_frames
        self._views = views_of(self.table)
        # a plain namespace: per-item attribute reads on an OmegaConf node cost ~1 ms per item
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True)) if OmegaConf.is_config(cfg) else cfg
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = augment
        self.seed = seed
        self.source = source
        self.paths = self.table["path"].astype(str).tolist()
        self._kinds = self.table["kind"].tolist()
        self._frames = self.table["frame"].to_numpy(np.int64)
        self._masks = self.table["mask_path"].astype(str).tolist()
        self.patient_ids = self.table["patient_id"].astype(str).to_numpy(dtype=object)
        self.organs = self.table["organ"].astype(str).to_numpy(dtype=object)
        self.datasets = self.table["dataset"].astype(str).to_numpy(dtype=object)
        if "_label" in self.table.columns:  # labels resolved on the whole table (all splits share class indices)
            self.labels = self.table["_label"].to_numpy(np.int64) if class_names else None
            self.class_names = list(class_names or [])
            self.targets = self.table["_target"].to_numpy(np.float32)
        else:
            self.labels, self.class_names, self.targets = resolve_labels(self.table, cfg.task)
        self.num_classes = len(self.class_names)
        self.balance_weights = dict(getattr(cfg, "balance_weights", {}) or {})
        self._status = torch.zeros(len(self.table), dtype=torch.int8).share_memory_()  # shared with workers
        self._logged: set[int] = set()

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ bad items
    def _mark_bad(self, idx: int, err: BadItem) -> None:
        self._status[idx] = _reason_code(err.reason)
        if idx not in self._logged:
            self._logged.add(idx)
            log.warning("skipping bad item %d (%s): %s", idx, err.path or self.paths[idx], err.reason)
        n_bad = int((self._status > 0).sum())
        if n_bad > self.cfg.bad_item_threshold * len(self):
            raise DataError(f"{n_bad} of {len(self)} items are unreadable ({n_bad / len(self):.1%} > "
                            f"data.bad_item_threshold={self.cfg.bad_item_threshold}); latest: {self.paths[idx]}: "
                            f"{err.reason}. Fix or remove the files listed in the log, or raise the threshold.")

    def bad_report(self) -> list[dict]:
        """Every item found bad so far (in this process or its DataLoader workers): index, path, reason."""
        idx = torch.nonzero(self._status > 0).flatten().tolist()
        return list(self.skipped) + [{"index": i, "path": self.paths[i], "reason": REASONS[int(self._status[i])]}
                                     for i in idx]

    # ------------------------------------------------------------------ pipeline
    def _region(self, idx: int, img: np.ndarray) -> np.ndarray | None:
        return item_region(img, self._masks[idx], self._views[idx], self.cfg.region, self.paths[idx])

    def source_view(self, idx: int, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The item's pixels before preprocessing (decoded, cut to its pane, Doppler colour per data.colour_frames)
        and its region mask (None for data.region=none); `max_side` 0 decodes at full resolution."""
        side = 2 * max(self.img_size) if max_side is None else max_side
        img = decode(self.paths[idx], self._kinds[idx], int(self._frames[idx]), max_side=side)
        img = self._views[idx].cut(img, getattr(self.cfg, "colour_frames", "skip"))
        return img, self._region(idx, img)

    def preprocessed(self, idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The item after preprocessing, before geometry and augmentation (what `usjepa data prepare` stores)."""
        img, region = self.source_view(idx)
        return preprocess_frame(img, region, self.cfg.preprocess, self.cfg.channels)

    def load(self, idx: int, rng: np.random.Generator | None = None) -> dict:
        """The item's tensors; raises BadItem for unreadable input."""
        cfg = self.cfg
        img, region = self.preprocessed(idx)
        reg = region if region is not None else np.ones(img.shape[:2], bool)
        if rng is not None:
            img, reg = augment_geometry(img, reg, rng, self.img_size, tuple(cfg.crop_scale), cfg.hflip, cfg.vflip,
                                        ratio=tuple(getattr(cfg, "crop_ratio", (3 / 4, 4 / 3))))
            img = photometric(img, reg if region is not None else np.ones_like(reg), rng, cfg.augment_policy)
        else:
            img, reg = resize_full(img, reg, self.img_size, cfg.resize)
        if region is None:
            reg = np.ones(self.img_size, bool)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)  # [C, H, W]
        if cfg.channels == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1).contiguous()
        elif cfg.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {cfg.channels}")
        return {"image": x.clamp_(0.0, 1.0), "region": torch.from_numpy(np.ascontiguousarray(reg))}

    def __getitem__(self, key) -> dict | None:
        idx, item_seed = (int(key[0]), key[1]) if isinstance(key, tuple) else (int(key), None)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        rng = np.random.default_rng([int(item_seed) & ((1 << 63) - 1), 0xA6]) \
            if self.augment and item_seed is not None else None
        try:
            out = self.load(idx, rng)
        except BadItem as e:
            self._mark_bad(idx, e)
            return None
        out["label"] = torch.tensor(int(self.labels[idx]) if self.labels is not None else -1, dtype=torch.int64)
        out["target"] = torch.tensor(float(self.targets[idx]), dtype=torch.float32)
        out.update(index=idx, path=self.paths[idx], patient_id=str(self.patient_ids[idx]))
        return out


def collate_skip_bad(batch: list) -> dict | None:
    """Stack the good items of a batch (None = bad item, dropped); `num_bad` counts the dropped ones.
    Returns None when every item was bad."""
    good = [b for b in batch if b is not None]
    if not good:
        return None
    out: dict = {}
    for k in good[0]:
        vals = [g[k] for g in good]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else \
            torch.tensor(vals) if isinstance(vals[0], int) else vals
    out["num_bad"] = len(batch) - len(good)
    return out
