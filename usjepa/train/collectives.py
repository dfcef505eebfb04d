"""Every collective the trainer runs goes through here, with its tensors on the process group's device.

NCCL takes CUDA tensors only: a CPU tensor handed to an NCCL group fails ("No backend type associated with
device type cpu"). So the group is started with NCCL for CUDA tensors *and* gloo for CPU ones
(`backend_for("cuda")` = "cpu:gloo,cuda:nccl"), and this helper creates the tensors it reduces on the group's
device (the rank's GPU under NCCL, the CPU under gloo). Nothing else in the trainer calls torch.distributed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


def backend_for(device_type: str) -> str:
    """The process-group backend for ranks that train on `device_type`: NCCL plus gloo for CPU tensors on CUDA."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def group_device() -> torch.device:
    """The device the default process group reduces on: the current GPU when it serves CUDA, else the CPU."""
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
        if "nccl" in str(dist.get_backend_config()):
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Collectives:
    """The trainer's collectives for one process group; all are no-ops for a world of one."""

    def __init__(self, world_size: int, device: torch.device | None = None) -> None:
        self.world_size = int(world_size)
        self.device = torch.device(device) if device is not None else group_device()

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of `x` (a new float32 tensor on the group's device)."""
        x = x.detach().to(self.device, torch.float32).clone()
        if self.active:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= self.world_size
        return x

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True (e.g. one rank was told to stop)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def run_on_main(self, fn: Callable[[], T], is_main: bool) -> T:
        """Run `fn` on rank 0 only; every rank returns its result or raises its error (no rank is left waiting)."""
        if not self.active:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if is_main:
            try:
                outcome = ("ok", fn())
            except Exception as e:  # handed to the other ranks, then raised here unchanged
                error, outcome = e, ("error", e)
        outcome = self.broadcast(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]
