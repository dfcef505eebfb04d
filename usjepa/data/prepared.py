"""`data.source=prepared`: items read from shards written by `usjepa data prepare`, with only augmentation left.

Per item: a slice of a memory map (opened lazily in each DataLoader worker), a random resized crop of the uint8
frame resized once (antialiased bilinear, Pillow's uint8 path), flips, then the photometric policy in float32 at
the model's size. The random draws are the per-item path's, in its order (usjepa.data.transforms), from the same
item seeds, so sampling, balancing and exact resume work as for every other source.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from PIL import Image

from usjepa.data.shards import ShardReader
from usjepa.data.transforms import Box, letterbox, photometric, sample_crop

_U8 = np.float32(1.0 / 255.0)


def crop_resize_u8(img: np.ndarray, region: np.ndarray | None, box: Box, size: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop `box` of a uint8 [h, w] / [h, w, 3] image and resize to size (H, W) in one step (bilinear,
    antialiased); the region nearest. -> (uint8 image, bool region or None)."""
    h, w = size
    im = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR, box=box))
    reg = None if region is None else \
        np.array(Image.fromarray(region.view(np.uint8)).resize((w, h), Image.NEAREST, box=box)).view(bool)
    return im, reg


def resize_full_u8(img: np.ndarray, region: np.ndarray | None, size: tuple[int, int], mode: str = "pad"
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole uint8 frame at size (H, W), aspect kept and zero-padded ('pad') or stretched ('squash'): the
    geometry of usjepa.data.transforms.resize_full."""
    return letterbox(img, region, size, mode, crop_resize_u8, np.uint8)


class PreparedDataset(torch.utils.data.Dataset):
    """Items of a shard folder's index (rows of one split) with the configured augmentation.

    `ds[i]` is the un-augmented view, `ds[(i, item_seed)]` the augmented one (draws from item_seed only), with the
    item contract of UltrasoundDataset: image [C, H, W] float32 in [0, 1], region bool [H, W], label, target,
    index, path, patient_id. Items that could not be read were left out and reported by `usjepa data prepare`.
    """

    def __init__(self, table: pd.DataFrame, cfg, img_size: tuple[int, int], augment: bool, root: str,
                 seed: int = 0, class_names: list[str] | None = None):
        self.table = table.reset_index(drop=True)
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True)) if OmegaConf.is_config(cfg) else cfg
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment, self.seed, self.source = augment, seed, "prepared"
        self.reader = ShardReader(root)
        t = self.table
        self.paths = t["path"].astype(str).tolist()
        self.patient_ids = t["patient_id"].astype(str).to_numpy(dtype=object)
        self.organs = t["organ"].astype(str).to_numpy(dtype=object)
        self.datasets = t["dataset"].astype(str).to_numpy(dtype=object)
        self.class_names = list(class_names or [])
        self.labels = t["_label"].to_numpy(np.int64) if class_names and "_label" in t else None
        self.targets = t["_target"].to_numpy(np.float32) if "_target" in t else np.full(len(t), np.nan, np.float32)
        self.num_classes = len(self.class_names)
        self.balance_weights = dict(getattr(cfg, "balance_weights", {}) or {})
        self.skipped: list[dict] = []
        self._loc = np.stack([t[c].to_numpy(np.int64) for c in ("shard", "offset", "height", "width", "channels",
                                                                  "region_offset")], 1)  # [N, 6]
        self._has_region = t["has_region"].to_numpy(bool)
        self._ones = np.ones((0, 0), bool)

    def __len__(self) -> int:
        return len(self.table)

    def bad_report(self) -> list[dict]:
        """Nothing goes bad at read time: unreadable items were left out by `usjepa data prepare`."""
        return []

    def _all_true(self, h: int, w: int) -> np.ndarray:
        if self._ones.shape[0] < h or self._ones.shape[1] < w:
            self._ones = np.ones((max(h, self._ones.shape[0]), max(w, self._ones.shape[1])), bool)
        return self._ones[:h, :w]

    def stored(self, idx: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """(uint8 frame [h, w] or [h, w, 3], stored region or None, whether training uses the region)."""
        shard, off, h, w, c, roff = (int(v) for v in self._loc[idx])
        img = self.reader.frame(shard, off, h, w, c)
        region = self.reader.region(shard, roff, h, w) if roff >= 0 else None
        return img, region, bool(self._has_region[idx])

    def preprocessed(self, idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The item as UltrasoundDataset.preprocessed gives it (float32; region None: the whole frame), from the
        stored uint8 frame."""
        img, region, used = self.stored(idx)
        return img.astype(np.float32) * _U8, region if used else None

    def load(self, idx: int, rng: np.random.Generator | None = None) -> dict:
        cfg, size = self.cfg, self.img_size
        img, region, used = self.stored(idx)
        region = region if used else None
        if rng is not None:  # the draws of transforms.augment_geometry, then photometric
            h, w = img.shape[:2]
            # a whole-frame region needs no coverage test (it always passes and draws nothing)
            box = sample_crop(rng, region if region is not None else self._all_true(h, w), tuple(cfg.crop_scale),
                              tuple(getattr(cfg, "crop_ratio", (3 / 4, 4 / 3))), out_aspect=size[1] / size[0],
                              min_cover=0.5 if region is not None else 0.0)
            img, reg = crop_resize_u8(img, region, box, size)
            if rng.random() < cfg.hflip:
                img, reg = img[:, ::-1], None if reg is None else reg[:, ::-1]
            if rng.random() < cfg.vflip:
                img, reg = img[::-1], None if reg is None else reg[::-1]
            x = img.astype(np.float32) * _U8
            x = photometric(x, reg if reg is not None else self._all_true(*size), rng, cfg.augment_policy)
        else:
            img, reg = resize_full_u8(img, region, size, cfg.resize)
            x = img.astype(np.float32) * _U8
        t = torch.from_numpy(np.ascontiguousarray(x))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # [C, H, W]
        if cfg.channels == 3 and t.shape[0] == 1:
            t = t.expand(3, -1, -1).contiguous()
        elif cfg.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {cfg.channels}")
        r = torch.from_numpy(np.ascontiguousarray(reg)) if reg is not None else torch.ones(size, dtype=torch.bool)
        return {"image": t.clamp_(0.0, 1.0), "region": r}

    def __getitem__(self, key) -> dict:
        idx, item_seed = (int(key[0]), key[1]) if isinstance(key, tuple) else (int(key), None)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        rng = np.random.default_rng([int(item_seed) & ((1 << 63) - 1), 0xA6]) \
            if self.augment and item_seed is not None else None
        out = self.load(idx, rng)
        out["label"] = torch.tensor(int(self.labels[idx]) if self.labels is not None else -1, dtype=torch.int64)
        out["target"] = torch.tensor(float(self.targets[idx]), dtype=torch.float32)
        out.update(index=idx, path=self.paths[idx], patient_id=str(self.patient_ids[idx]))
        return out


def prepared_dataset(table: pd.DataFrame, cfg, img_size: tuple[int, int], augment: bool, seed: int = 0,
                     class_names: list[str] | None = None) -> PreparedDataset:
    """`data.source=prepared`'s Dataset in the call form `build_dataset` uses for every source (DATA_SOURCES)."""
    return PreparedDataset(table, cfg, img_size, augment, cfg.root, seed, class_names)
