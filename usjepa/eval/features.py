"""Frozen-encoder features, extracted once and cached on disk.

For every item: the mean of the patch tokens and (when the encoder has one) the CLS token of each of
the last k blocks, and optionally the final block's patch tokens (for attentive probes). Files are
safetensors written atomically, keyed by encoder identity + dataset identity + preprocessing
(corruption, precision), so the same features serve every probe setting and every later run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from usjepa.data.dataset import collate_skip_bad
from usjepa.data.spec import VIEW_VERSION
from usjepa.eval.corruptions import apply_corruption
from usjepa.eval.encoders import ProbeEncoder
from usjepa.io.atomic import atomic_write
from usjepa.spec import plain

log = logging.getLogger(__name__)
FORMAT_VERSION = "1"


@dataclass
class FeatureSet:
    """Features of the valid items of one split (bad items are skipped and do not appear)."""

    mean: Tensor  # [N, K, D] mean-pooled patch tokens of the last K blocks (oldest first), float32
    cls: Tensor | None  # [N, K, D] CLS tokens, or None
    tokens: Tensor | None  # [N, T, D] final-block patch tokens (float16), or None
    label: np.ndarray  # [N] int64 (-1 unlabelled)
    target: np.ndarray  # [N] float32 (nan when absent)
    index: np.ndarray  # [N] dataset index of each row
    patient_id: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @property
    def last_k(self) -> int:
        return int(self.mean.shape[1])

    def pooled(self, pooling: str = "mean", k: int = 1) -> Tensor:
        """[N, k*D] (or [N, 2*k*D] for cls+mean): the last k blocks concatenated, newest last."""
        if k > self.last_k:
            raise ValueError(f"asked for the last {k} blocks but only {self.last_k} were extracted")
        parts = []
        if pooling in ("cls", "cls+mean"):
            if self.cls is None:
                raise ValueError("this encoder has no CLS token; use pooling 'mean'")
            parts.append(self.cls[:, -k:].flatten(1))
        if pooling in ("mean", "cls+mean"):
            parts.append(self.mean[:, -k:].flatten(1))
        if not parts:
            raise ValueError(f"unknown pooling '{pooling}'; choose mean, cls or cls+mean")
        return torch.cat(parts, dim=1)

    def subset(self, rows: np.ndarray | Sequence[int]) -> FeatureSet:
        rows = np.asarray(rows, dtype=np.int64)
        t = torch.from_numpy(rows)
        return FeatureSet(self.mean[t], None if self.cls is None else self.cls[t],
                          None if self.tokens is None else self.tokens[t], self.label[rows], self.target[rows],
                          self.index[rows], [self.patient_id[i] for i in rows] if self.patient_id else [])


# ----------------------------------------------------------------------------- identity and cache files


def dataset_identity(data_cfg, split: str | None, img_size: Sequence[int], dataset: Dataset,
                     indices: np.ndarray) -> str:
    """Hash of the data config, split, image size, chosen items and (when exposed) labels and paths."""
    cfg = dict(plain(data_cfg) or {})
    for k in ("num_workers", "batch_size", "sim_workers"):  # they do not change what items look like
        cfg.pop(k, None)
    h = hashlib.sha256(json.dumps({"cfg": cfg, "split": split, "img": list(img_size), "n": len(dataset),
                                   "view_version": VIEW_VERSION},
                                  sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        h.update(np.ascontiguousarray(np.asarray(labels)).tobytes())
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        h.update("\n".join(map(str, paths)).encode())
    return h.hexdigest()


def cache_path(cache_dir: str | Path, encoder_id: str, data_id: str, corruption: str = "", severity: int = 0,
               precision: str = "fp32") -> Path:
    key = hashlib.sha256(f"{FORMAT_VERSION}|{encoder_id}|{data_id}|{corruption}|{severity}|{precision}".encode())
    return Path(cache_dir) / encoder_id[:16] / f"{key.hexdigest()[:32]}.safetensors"


def save_features(path: Path, fs: FeatureSet, meta: dict) -> None:
    """Atomic safetensors write (tensors only; patient ids and metadata as JSON in the header)."""
    from safetensors.torch import save_file

    tensors = {"mean": fs.mean.contiguous(), "label": torch.from_numpy(fs.label), "target": torch.from_numpy(fs.target),
               "index": torch.from_numpy(fs.index)}
    if fs.cls is not None:
        tensors["cls"] = fs.cls.contiguous()
    if fs.tokens is not None:
        tensors["tokens"] = fs.tokens.contiguous()
    with atomic_write(path, mode=None, fsync=False) as tmp:  # a cache: a lost write is recomputed
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta), "patient_id": json.dumps(fs.patient_id)})


def load_features(path: Path) -> FeatureSet | None:
    """A cached FeatureSet, or None when the file is missing or unreadable (then it is recomputed)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            pid = json.loads((f.metadata() or {}).get("patient_id", "[]"))
    except Exception as e:  # a corrupt cache entry is recomputed, never trusted
        log.warning("ignoring unreadable feature cache %s (%s)", path, e)
        return None
    return FeatureSet(t["mean"], t.get("cls"), t.get("tokens"), t["label"].numpy(), t["target"].numpy(),
                      t["index"].numpy(), pid)


# ----------------------------------------------------------------------------- extraction


def _probe_item(b: dict | None) -> dict | None:
    """The fields a probe reads, with defaults for sources that leave some out (no region: the whole image)."""
    if b is None:
        return None
    h, w = b["image"].shape[-2:]
    region = b.get("region")
    return {"image": b["image"], "index": int(b["index"]),
            "region": region if region is not None else torch.ones(h, w, dtype=torch.bool),
            "label": torch.tensor(int(b.get("label", -1)), dtype=torch.long),
            "target": torch.tensor(float(b.get("target", float("nan"))), dtype=torch.float32),
            "patient_id": str(b.get("patient_id", ""))}


def _collate(batch: list) -> dict | None:
    """A probe batch (see `_probe_item`); bad items (None) are dropped, None when all were bad."""
    return collate_skip_bad([_probe_item(b) for b in batch])


class _Indexed(Dataset):
    """Items with their dataset index filled in (some sources may leave it out)."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds[i]
        if item is not None and "index" not in item:
            item = dict(item, index=i)
        return item


@torch.no_grad()
def encode_images(enc: ProbeEncoder, images: Tensor, last_k: int = 1,
                  want_tokens: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(mean [B, K, D], cls [B, K, D] or None, tokens [B, N, D] or None) for a batch of [0, 1] images."""
    if enc.use_intermediate:
        outs = enc.module.get_intermediate_layers(images, n=last_k)
        mean = torch.stack([p.float().mean(1) for p, _ in outs], 1)
        cls = torch.stack([c.float() for _, c in outs], 1) if outs[-1][1] is not None else None
        tokens = outs[-1][0] if want_tokens else None
    else:
        if last_k > 1:
            raise ValueError(f"encoder '{enc.name}' ({enc.kind}) gives only its own output layer; use last_k=[1]")
        p = enc.module(images)  # [B, N, D]
        mean, cls, tokens = p.float().mean(1, keepdim=True), None, (p if want_tokens else None)
    return mean, cls, tokens


def extract_features(enc: ProbeEncoder, dataset: Dataset, indices: np.ndarray | None = None, *, last_k: int = 1,
                     want_tokens: bool = False, corruption: str = "", severity: int = 0, corruption_seed: int = 0,
                     batch_size: int = 64, num_workers: int = 0, device: str | torch.device = "cpu",
                     cache_dir: str | Path | None = None, data_id: str | None = None,
                     progress: bool = False) -> FeatureSet:
    """Features of `dataset[indices]` under no_grad, read from / written to the cache when `cache_dir` is set.

    A cached file is reused when it holds at least `last_k` blocks (and tokens when asked); otherwise it is
    recomputed and replaced. Corruptions are applied to the [0, 1] images (with their region masks)
    before the encoder sees them.
    """
    device = torch.device(device)
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    precision = "bf16" if device.type == "cuda" else "fp32"
    path = None
    if cache_dir is not None:
        data_id = data_id or dataset_identity(None, None, (0, 0), dataset, indices)
        path = cache_path(cache_dir, enc.identity, data_id, corruption, severity, precision)
        cached = load_features(path)
        if cached is not None and cached.last_k >= last_k and (cached.tokens is not None or not want_tokens):
            log.debug("feature cache hit %s", path)
            return cached
        if cached is not None:  # extend what is there rather than replace it with less
            last_k = max(last_k, cached.last_k)
            want_tokens = want_tokens or cached.tokens is not None
    t0 = time.time()
    loader = DataLoader(Subset(_Indexed(dataset), indices.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    means, clss, toks, labels, targets, idx, pids = [], [], [], [], [], [], []
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=f"features {enc.name}{' ' + corruption + str(severity) if corruption else ''}",
                  leave=False)
    for batch in it:
        if batch is None:
            continue
        images = batch["image"]
        if corruption:
            images = apply_corruption(images, batch["region"], corruption, severity, batch["index"], corruption_seed)
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            mean, cls, tokens = encode_images(enc, images, last_k, want_tokens)
        means.append(mean.float().cpu())
        if cls is not None:
            clss.append(cls.float().cpu())
        if tokens is not None:
            toks.append(tokens.to(torch.float16).cpu())
        labels.append(batch["label"])
        targets.append(batch["target"])
        idx.append(batch["index"])
        pids += batch["patient_id"]
    if not means:
        raise ValueError(f"no usable items to encode: all {len(indices)} items of the split were bad or it is empty")
    fs = FeatureSet(torch.cat(means), torch.cat(clss) if clss else None, torch.cat(toks) if toks else None,
                    torch.cat(labels).numpy(), torch.cat(targets).numpy(), torch.cat(idx).numpy(), pids)
    skipped = len(indices) - len(fs)
    dt = time.time() - t0
    log.info("encoded %d images with %s in %.1fs (%.1f img/s)%s", len(fs), enc.name, dt, len(fs) / max(dt, 1e-9),
             f"; skipped {skipped} bad items" if skipped else "")
    if path is not None:
        save_features(path, fs, {"encoder": enc.name, "encoder_id": enc.identity, "data_id": data_id,
                                 "corruption": corruption, "severity": severity, "precision": precision,
                                 "skipped": skipped, "seconds": dt})
    return fs
