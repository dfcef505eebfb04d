"""The large-run options of a training run: how the objective's networks sit on the hardware.

`place_models` applies, in this order, what `train.*` asks for:
  1. `train.activation_checkpointing`: per-block recomputation in the student and the predictor (or MAE decoder);
  2. `train.sharding=fsdp`: FSDP2 `fully_shard` per block of the student and the predictor, in place of DDP. A SALT
     teacher, held outside the objective's module tree, stays a full copy on every rank in its own precision
     (replicated: frozen, it needs no gradient synchronisation), or with `train.shard_teacher=true` is sharded per
     block too (gathered one block at a time in its forward: for a teacher too large to copy). On CUDA with bf16
     the blocks are gathered in bf16 and gradients reduced in fp32; the sharded master weights and the AdamW state
     stay fp32;
  3. `train.compile`: torch.compile of the student, the predictor and the teacher's forward (`COMPILE_BACKEND`);
and returns the effective settings, which the trainer writes to env.json. The optimizer is built afterwards, on the
(sharded) parameters, fused on CUDA (`adamw_fused`).

Checkpoints of a sharded run hold gathered full state dicts: every rank all-gathers each sharded tensor
(`usjepa.models.sharding.full_tensors`, a collective; one tensor at a time, moved to the CPU), rank 0 writes the same
file an unsharded run writes. So a sharded run resumes unsharded and vice versa, on any number of processes: on load
each rank reads the file and cuts every full tensor back to its own shard (`localise_checkpoint`, no communication).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from usjepa.config import ConfigError

if TYPE_CHECKING:
    from usjepa.config import PretrainConfig

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # torch.compile's default; tests may swap in a cheaper backend, users do not


def check_world(cfg: PretrainConfig, world_size: int) -> None:
    """What the config alone cannot check: sharding needs 2+ processes (called before the run folder is touched)."""
    if getattr(cfg.train, "sharding", "none") == "fsdp" and world_size < 2:
        raise ConfigError("train.sharding=fsdp needs a distributed run (torchrun or srun, 2+ processes) but this is "
                          "a single process: set train.sharding=none")


def place_models(objective: nn.Module, cfg: PretrainConfig, device: torch.device, world_size: int,
                 amp: bool) -> dict[str, Any]:
    """Apply activation checkpointing, FSDP2 sharding and compile to `objective` (on `device` already).

    Returns the effective settings for env.json. Raises ConfigError for sharding on a single process.
    """
    t = cfg.train
    sharding = getattr(t, "sharding", "none")
    check_world(cfg, world_size)
    settings: dict[str, Any] = {"activation_checkpointing": False, "sharding": sharding, "compile": False}
    if t.activation_checkpointing:
        from usjepa.models.checkpointing import apply_activation_checkpointing

        settings["activation_checkpointing"] = True
        settings["checkpointed_blocks"] = apply_activation_checkpointing(objective)
    if sharding == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        from usjepa.models.sharding import mixed_precision, shard_objective

        # the student returns x[:, prefix:] and the predictor a reshape: views, which FSDP2 warns about in case a
        # caller modifies them in place; the objectives never do (the 2-process test equals the 1-process run)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP(VisionTransformer|Predictor)\) "
                                r"returned a view tensor")
        mesh = init_device_mesh(device.type, (world_size,))
        policy = mixed_precision(device.type) if amp else None
        settings["fsdp_units"] = shard_objective(objective, mesh, mp_policy=policy)
        settings["fsdp_param_dtype"] = "bf16" if policy is not None else "fp32"
        teacher = getattr(objective, "teacher", None)
        settings["teacher_placement"] = None if teacher is None else "replicated"
        if teacher is not None and getattr(t, "shard_teacher", False):
            from usjepa.models.sharding import place_teacher

            place_teacher(teacher, device, mesh, mode="shard", dtype=None)  # weights keep their dtype
            settings["teacher_placement"] = "sharded"
    if t.compile:
        from usjepa.models.compiling import compile_objective

        settings["compile"] = True
        settings["compile_backend"] = COMPILE_BACKEND
        settings["compiled"] = compile_objective(objective, backend=COMPILE_BACKEND)
    log.info("large-run options: %s", settings)
    return settings


def adamw_fused(param_groups: list[dict]) -> bool | None:
    """True (the fused CUDA kernel) when every parameter is on a GPU; None (torch's default) otherwise."""
    params = [p for g in param_groups for p in g["params"]]
    return True if params and all(p.is_cuda for p in params) else None
