"""A small linear probe to run during pretraining: collapse shows up as a falling probe score in metrics.csv.

`quick_linear_probe` works from two loaders; `periodic_probe` is what the training loop calls every
`train.probe_every` steps: it reads a few hundred labelled images of the run's data config once
(kept in memory), then each call encodes them with the current student and fits one linear head.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from torch import Tensor, nn

from usjepa.eval.linear import linear_probe
from usjepa.spec import plain

log = logging.getLogger(__name__)

_IMAGES: dict[str, tuple] = {}  # data identity -> (train images, labels, val images, labels); one entry kept
_WARNED: set[str] = set()


@torch.no_grad()
def _encode(encoder: nn.Module, images: Tensor, device, batch_size: int = 128) -> Tensor:
    """Mean-pooled final patch tokens [N, D] (float32, CPU)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(device)
        dev = torch.device(device)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out.append(encoder(x).float().mean(1).cpu())
    return torch.cat(out)


def _collect(loader, max_items: int) -> tuple[Tensor, np.ndarray]:
    images, labels, n = [], [], 0
    for batch in loader:
        if batch is None:
            continue
        keep = batch["label"] >= 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
        n += int(keep.sum())
        if n >= max_items:
            break
    if not images:
        return torch.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(images)[:max_items], torch.cat(labels)[:max_items].numpy()


def _fit(encoder: nn.Module, xtr: Tensor, ytr: np.ndarray, xva: Tensor, yva: np.ndarray, device,
         wd: float | None) -> dict:
    was_training = encoder.training
    encoder.eval()
    try:
        t0 = time.time()
        ftr, fva = _encode(encoder, xtr, device), _encode(encoder, xva, device)
        num_classes = int(max(ytr.max(), yva.max())) + 1
        # one fixed head solved to its optimum (no selection), so the val score is an unbiased monitoring signal;
        # the default penalty is scikit-learn's default C = 1 (wd = 1 / N)
        r = linear_probe((ftr, ytr), (fva, yva), None, num_classes=num_classes,
                         wds=[wd if wd is not None else 1.0 / len(ytr)])
    finally:
        encoder.train(was_training)
    return {"macro_f1": r["val"]["macro_f1"], "accuracy": r["val"]["accuracy"],
            "balanced_acc": r["val"]["balanced_acc"], "n_train": len(ytr), "n_val": len(yva),
            "seconds": time.time() - t0}


def quick_linear_probe(encoder: nn.Module, train_loader, val_loader, device: str | torch.device = "cpu", *,
                       max_items: int = 512, wd: float | None = None) -> dict:
    """Macro-F1 on val of one converged L2-regularised linear head (wd; default 1 / N, i.e. scikit-learn's C = 1)
    on standardised mean-pooled patch tokens; loaders yield dicts with image and label.

    Returns {macro_f1, accuracy, balanced_acc, n_train, n_val, seconds}; the encoder's train/eval mode is restored.
    """
    xtr, ytr = _collect(train_loader, max_items)
    xva, yva = _collect(val_loader, max_items)
    if len(ytr) < 2 or len(yva) < 1:
        raise ValueError(f"quick_linear_probe needs labelled items; got {len(ytr)} train and {len(yva)} val")
    return _fit(encoder, xtr, ytr, xva, yva, device, wd)


def _probe_images(data_cfg, img_size: tuple[int, int], max_train: int, max_val: int):
    """(train images, labels, val images, labels) of the config's labelled train / val splits, read once."""
    import json

    from torch.utils.data import DataLoader, Subset

    from usjepa.data import build_dataset
    from usjepa.eval.features import _collate
    from usjepa.eval.splits import cap_indices

    key = json.dumps([plain(data_cfg), list(img_size), max_train, max_val],
                     sort_keys=True, default=str)
    if key not in _IMAGES:
        parts = []
        for split, n in (("train", max_train), ("val", max_val)):
            ds = build_dataset(data_cfg, split, img_size, augment=False, seed=0)
            idx = cap_indices(len(ds), n, seed=0).tolist()
            parts += list(_collect(DataLoader(Subset(ds, idx), batch_size=64, collate_fn=_collate), n))
        _IMAGES.clear()
        _IMAGES[key] = tuple(parts)
    return _IMAGES[key]


def periodic_probe(encoder: nn.Module, cfg, device: str | torch.device = "cpu", max_train: int = 256,
                   max_val: int = 128) -> float | None:
    """Val macro-F1 of a quick linear probe on the run's labelled data (cfg.data), or None when it has no labels."""
    from usjepa.data import DataError

    data_cfg = copy.deepcopy(cfg.data)
    data_cfg.augment = False
    try:
        xtr, ytr, xva, yva = _probe_images(data_cfg, tuple(cfg.model.img_size), max_train, max_val)
    except (DataError, ValueError) as e:
        _warn_once(f"periodic probe disabled: cannot read labelled train / val splits of the data ({e})")
        return None
    if len(ytr) < 2 or len(yva) < 1 or len(np.unique(ytr)) < 2 or len(np.unique(yva)) < 2:
        _warn_once("periodic probe disabled: the data has fewer than two labelled classes in train / val")
        return None
    return float(_fit(encoder, xtr, ytr, xva, yva, device, None)["macro_f1"])


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)
