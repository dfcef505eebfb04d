"""Where a run starts: the newest usable checkpoint of its folder, step 0 in a folder without a run, or a refusal.

Order of trust: latest.pt, then step_N.pt newest first. A file that cannot be read or fails its checksum is
renamed NAME.damaged (kept, out of the way) and the next one is tried, named in the log. A folder that shows a
saved run (status.json, metrics.csv, best.pt, encoder.safetensors) but has no usable checkpoint is refused: a
restart at step 0 would overwrite it. The only step-0 start in a used folder is a run that never saved a
checkpoint and has the same settings (a crash or requeue before the first checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from usjepa.errors import ConfigError
from usjepa.io.runfolder import BEST, CONFIG, ENCODER, LATEST, RunFolder
from usjepa.models.checkpoint_io import CheckpointError, strict_load
from usjepa.train.checkpoint import load_training_checkpoint, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where this start begins (picklable: rank 0 decides, the other ranks receive it)."""

    step: int = 0
    path: Path | None = None  # the checkpoint to load; None: step 0
    config: dict | None = None  # the checkpoint's resolved config
    best_val: float | None = None
    set_aside: list[str] = field(default_factory=list)  # damaged files renamed on the way


def find_resume_point(folder: RunFolder, mode: str) -> tuple[ResumePoint, dict | None]:
    """(where to start, the loaded checkpoint or None); raises when the folder's run cannot be resumed safely."""
    candidates = folder.checkpoint_candidates()
    state = folder.run_state()
    if mode == "never" and state:
        raise ConfigError(f"run folder '{folder.path}' already holds a run ({', '.join(state[:6])}) and "
                          "train.resume=never: point train.out_dir at a new folder")
    problems: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            ckpt = load_training_checkpoint(path)
        except CheckpointError as e:
            problems.append((path, str(e)))
            continue
        point = ResumePoint(int(ckpt["step"]), path, ckpt["config"], ckpt.get("best_val"))
        for bad, why in problems:
            point.set_aside.append(folder.set_aside(bad).name)
            log.warning("%s; set aside as %s", why, point.set_aside[-1])
        if path.name != LATEST:
            why = "damaged" if problems and problems[0][0].name == LATEST else "missing"
            log.warning("latest.pt is %s: resuming from %s (step %d), the newest valid checkpoint",
                        why, path.name, point.step)
        return point, ckpt
    if problems:
        listed = " | ".join(why for _, why in problems)
        raise CheckpointError(f"no usable checkpoint in '{folder.path}' to resume from: {listed}. Nothing was "
                              "changed; restore a checkpoint, or point train.out_dir at a new folder")
    if state:
        _check_unsaved_restart(folder, state)
    return ResumePoint(), None


def _check_unsaved_restart(folder: RunFolder, state: list[str]) -> None:
    """A folder with run files but no checkpoint: allowed only for a run that never saved one (same settings)."""
    status = folder.read_status()
    saved = [n for n in (BEST, ENCODER) if n in state]
    if status.get("ckpt_step") or status.get("last_ckpt") or status.get("state") == "completed":
        saved.append(f"status.json (state {status.get('state')}, checkpoint at step "
                      f"{status.get('ckpt_step') or '?'})")
    if saved or not (folder / CONFIG).exists():
        raise CheckpointError(
            f"run folder '{folder.path}' holds a run ({', '.join(saved or state)}) but no checkpoint to resume "
            "from (latest.pt and step_N.pt are missing); starting at step 0 would overwrite it. Restore the "
            "checkpoint, or move those files away, or point train.out_dir at a new folder")
    log.warning("'%s' holds an attempt that saved no checkpoint (%s): starting again at step 0",
                folder.path, ", ".join(state))


def load_resume_state(ckpt: dict, path: Path, modules: dict[str, torch.nn.Module],
                      optimizer: torch.optim.Optimizer, objective_name: str) -> None:
    """Strictly load every module, the optimizer and the RNG states from a checkpoint dict."""
    for k, m in modules.items():
        if k not in ckpt:
            raise CheckpointError(f"'{path}' has no '{k}' entry for objective {objective_name}")
        strict_load(m, ckpt[k], f"'{path}' [{k}]")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state in '{path}' does not match the model: {e}") from None
    set_rng_state(ckpt["rng"])
