"""Training checkpoints: one dict with a checksum of its contents, written atomically, loaded with weights_only=True.

A bad checkpoint is an error that names the file and what is wrong: never a silent restart at step 0. Format 2
adds the checksum (`usjepa.io.digest`); format 1 files (no checksum) are still read. A run with sharded models
(`train.sharding=fsdp`) writes the same file: every rank gathers the full state, rank 0 writes it
(`usjepa.models.sharding.full_tensors`), so sharded and unsharded runs resume from each other's checkpoints.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa.io.atomic import atomic_write
from usjepa.io.checkpoints import safe_load
from usjepa.io.digest import DIGEST_KEY, digest_problem, with_digest
from usjepa.io.runfolder import RunFolder
from usjepa.models.checkpoint_io import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before checksums
REQUIRED = ("version", "step", "objective", "model", "optimizer", "rng", "config")


def to_cpu(obj: Any) -> Any:
    """The same nested structure with every tensor detached and on the CPU (what is saved and hashed)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class _WriteErrors:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports it only as "unexpected pos"."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` plus its checksum to `path` through a temp file (fsync, rename): readers see old or new.

    A failed write (a full disk) raises the OSError that caused it, naming the file; the temp file is removed.
    """
    state = with_digest(to_cpu(state))
    with atomic_write(path, "wb") as f:
        out = _WriteErrors(f)
        try:
            torch.save(state, out)
        except RuntimeError:
            if out.error is None:
                raise
            e = out.error
            raise OSError(e.errno, e.strerror, str(path)) from e  # names the checkpoint, not its temp file
    return Path(path)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | Path, verify: bool = True) -> dict:
    """A complete training checkpoint whose checksum matches its contents, else a CheckpointError naming the file."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' is not a usjepa training checkpoint (found {type(ckpt).__name__})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a complete usjepa training checkpoint: missing {', '.join(missing)}. "
            "Move it away to start fresh, or point train.out_dir at another folder."
        )
    if ckpt["version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"'{path}' has checkpoint format {ckpt['version']}; this usjepa reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    if verify and (ckpt["version"] >= 2 or DIGEST_KEY in ckpt):
        problem = digest_problem(ckpt)
        if problem:
            raise CheckpointError(f"'{path}' is damaged: {problem}")
    return ckpt


class CheckpointWriter:
    """latest.pt / step_N.pt / best.pt of one run, written by rank 0 only; remembers the newest checkpoint's step."""

    def __init__(self, folder: RunFolder, state_fn: Callable[[int], dict], keep_last: int, is_main: bool,
                 step: int = 0) -> None:
        self.folder, self.state_fn, self.keep_last, self.is_main = folder, state_fn, keep_last, is_main
        self.step = step  # newest checkpoint in the folder (0: none yet)
        self.time: float | None = None
        self.collective = False  # True when building the state is a collective (sharded models): every rank calls

    def _state(self, step: int) -> dict | None:
        """The state to write on rank 0; None on the other ranks (which still take part in gathering it)."""
        if not (self.is_main or self.collective):
            return None
        state = self.state_fn(step)
        return state if self.is_main else None

    def save(self, step: int, periodic: bool) -> None:
        """latest.pt (and step_N.pt + rotation when `periodic`)."""
        state = self._state(step)
        if state is None:
            return
        save_checkpoint(state, self.folder / "latest.pt")
        if periodic:
            save_checkpoint(state, self.folder / RunFolder.step_name(step))
            self.rotate(step)
        self.step, self.time = step, time.time()

    def save_best(self, step: int) -> None:
        state = self._state(step)
        if state is not None:
            save_checkpoint(state, self.folder / "best.pt")

    def rotate(self, current: int) -> None:
        """Keep the newest `keep_last` step_N.pt up to `current` (nothing past the run's own step is touched)."""
        mine = [p for s, p in self.folder.step_files() if s <= current]
        for old in mine[max(self.keep_last, 0):]:
            old.unlink(missing_ok=True)
