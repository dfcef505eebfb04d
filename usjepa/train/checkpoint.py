"""Checkpoints: one dict, written to a temp file and renamed over its name; loaded with weights_only=True.

A bad checkpoint is an error that names the file and what is wrong: never a silent restart at step 0.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from usjepa.models.checkpoint_io import CheckpointError, safe_load

FORMAT_VERSION = 1
REQUIRED = ("version", "step", "objective", "model", "optimizer", "rng", "sampler", "config")


def save_atomic(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


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


def load_training_checkpoint(path: str | Path) -> dict:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' is not a usjepa training checkpoint (found {type(ckpt).__name__})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a complete usjepa training checkpoint: missing {', '.join(missing)}. "
            "Move it away to start fresh, or point train.out_dir at another folder."
        )
    if ckpt["version"] != FORMAT_VERSION:
        raise CheckpointError(f"'{path}' has checkpoint format {ckpt['version']}; this usjepa reads {FORMAT_VERSION}")
    return ckpt


def rotate_step_checkpoints(run_dir: Path, keep_last: int) -> None:
    files = sorted(run_dir.glob("step_*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    for old in files[: max(len(files) - keep_last, 0)]:
        old.unlink(missing_ok=True)
