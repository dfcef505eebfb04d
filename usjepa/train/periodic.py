"""The chores of a training run, each a small object called at step boundaries (the loop stays the math).

`TrainingLog` (loss, lr, throughput... every `train.log_every`), `Validation` (held-out loss every
`train.val_every`, keeps best.pt), `PeriodicProbe` (linear probe every `train.probe_every`) each return the
fields they add to this step's metrics.csv row; `MetricsWriter` writes the row when any field is there;
`PeriodicCheckpointer` writes latest.pt + step_N.pt every `train.ckpt_every`; `StopCheck` asks every rank
whether a stop signal came.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from usjepa.io.runfolder import RunFolder
from usjepa.train.collectives import Collectives
from usjepa.train.diagnostics import effective_rank, feature_std

METRIC_FIELDS = [
    "step", "epoch", "loss", "val_loss", "probe_f1", "lr", "wd", "grad_norm", "images_per_s", "peak_mem_mb",
    "feat_std", "eff_rank", "bad_items", "elapsed_s",
]


@dataclass
class StepInfo:
    """What one finished optimizer step hands to the periodic objects."""

    step: int  # steps done, 1-based
    epoch: int
    loss: float  # mean over ranks
    lr: float
    wd: float
    grad_norm: float | torch.Tensor  # read (a device sync) only on logged steps
    images: int  # images of this step, all ranks
    logs: dict = field(default_factory=dict)  # the objective's logs (e.g. pooled features)


def _due(step: int, every: int, total: int, at_end: bool = True) -> bool:
    return every > 0 and (step % every == 0 or (at_end and step == total))


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class TrainingLog:
    """Loss, lr, wd, grad norm, throughput, memory and collapse diagnostics every `every` steps (and the last)."""

    def __init__(self, every: int, total: int, device: torch.device, bad_items: Callable[[], object],
                 bar=None) -> None:
        self.every, self.total, self.device, self.bad_items, self.bar = every, total, device, bad_items, bar
        self.t0 = self.window_t = time.time()
        self.window_images = 0

    def __call__(self, info: StepInfo) -> dict:
        self.window_images += info.images
        if self.bar is not None:
            self.bar.update(1)
        if not _due(info.step, self.every, self.total):
            return {}
        now = time.time()
        feats = info.logs.get("features")
        row = {
            "lr": f"{info.lr:.6g}", "wd": f"{info.wd:.6g}", "grad_norm": f"{float(info.grad_norm):.4g}",
            "images_per_s": f"{self.window_images / max(now - self.window_t, 1e-9):.2f}",
            "peak_mem_mb": f"{peak_mem_mb(self.device):.0f}",
            "feat_std": "" if feats is None else f"{feature_std(feats):.4g}",
            "eff_rank": "" if feats is None else f"{effective_rank(feats):.4g}",
            "bad_items": self.bad_items(), "elapsed_s": f"{now - self.t0:.1f}",
        }
        self.window_t, self.window_images = now, 0
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}")
        return row


class Validation:
    """Held-out loss every `every` steps (and the last); a new lowest loss is saved as best.pt."""

    def __init__(self, every: int, total: int, val_loss: Callable[[], float],
                 on_best: Callable[[int, float], None], best: float | None = None) -> None:
        self.every, self.total, self.val_loss, self.on_best, self.best = every, total, val_loss, on_best, best

    def __call__(self, info: StepInfo) -> dict:
        if not _due(info.step, self.every, self.total):
            return {}
        val = self.val_loss()
        if self.best is None or val < self.best:
            self.best = val
            self.on_best(info.step, val)
        return {"val_loss": f"{val:.6g}"}


class PeriodicProbe:
    """A quick linear probe of the student every `every` steps (a falling score shows collapse)."""

    def __init__(self, every: int, probe: Callable[[], str]) -> None:
        self.every, self.probe = every, probe

    def __call__(self, info: StepInfo) -> dict:
        if not (self.every and info.step % self.every == 0):
            return {}
        return {"probe_f1": self.probe()}


class MetricsWriter:
    """Appends a metrics.csv row (step, epoch, loss + the periodic fields) on rank 0."""

    def __init__(self, folder: RunFolder | None) -> None:
        self.folder = folder  # None on ranks other than 0

    def __call__(self, info: StepInfo, fields: dict) -> None:
        if fields and self.folder is not None:
            row = {"step": info.step, "epoch": info.epoch, "loss": f"{info.loss:.6g}", **fields}
            self.folder.append_metrics(METRIC_FIELDS, row)


class PeriodicCheckpointer:
    """latest.pt and step_N.pt every `every` steps before the last (the end of the run saves by itself)."""

    def __init__(self, every: int, total: int, save: Callable[[int, bool], None]) -> None:
        self.every, self.total, self.save = every, total, save

    def __call__(self, step: int) -> None:
        if self.every > 0 and step % self.every == 0 and step < self.total:
            self.save(step, True)


class StopCheck:
    """True on every rank once any rank's `should_stop()` says so (not after the last step: that run is done)."""

    def __init__(self, should_stop: Callable[[], bool] | None, collectives: Collectives, total: int) -> None:
        self.should_stop, self.collectives, self.total = should_stop, collectives, total

    def __call__(self, step: int) -> bool:
        if self.should_stop is None or step >= self.total:
            return False
        return self.collectives.any(bool(self.should_stop()))
