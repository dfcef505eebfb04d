"""The large-run options of a training run: how the objective's networks sit on the hardware.

`place_models` applies, in this order, what `train.*` asks for:
  1. `train.activation_checkpointing`: per-block recomputation in the student and the predictor (or MAE decoder);
  2. `train.sharding=fsdp`: FSDP2 `fully_shard` per block of the student and the predictor, in place of DDP. A SALT
     teacher, held outside the objective's module tree, stays a full copy on every rank in its own precision
     (replicated: frozen, it needs no gradient synchronisation). On CUDA with bf16 the blocks are gathered in bf16
     and gradients reduced in fp32; the sharded master weights and the AdamW state stay fp32;
  3. `train.compile`: torch.compile of the student, the predictor and the teacher's forward (`COMPILE_BACKEND`);
and returns the effective settings, which the trainer writes to env.json. The optimizer is built afterwards, on the
(sharded) parameters, fused on CUDA (`adamw_fused`).

Checkpoints of a sharded run hold gathered full state dicts: every rank all-gathers each sharded tensor
(`full_tensors`, a collective; one tensor at a time, moved to the CPU), rank 0 writes the same file an unsharded run
writes. So a sharded run resumes unsharded and vice versa, on any number of processes: on load each rank reads the
file and cuts every full tensor back to its own shard (`shard_like`, no communication).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from usjepa.config import ConfigError

log = logging.getLogger(__name__)

SHARDING = ("none", "fsdp")
COMPILE_BACKEND = "inductor"  # torch.compile's default; tests may swap in a cheaper backend, users do not


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support: nothing can be sharded
        return None
    return DTensor


def place_models(objective: nn.Module, cfg: DictConfig, device: torch.device, world_size: int,
                 amp: bool) -> dict[str, Any]:
    """Apply activation checkpointing, FSDP2 sharding and compile to `objective` (on `device` already).

    Returns the effective settings for env.json. Raises ConfigError for sharding on a single process.
    """
    t = cfg.train
    sharding = getattr(t, "sharding", "none")
    if sharding == "fsdp" and world_size < 2:
        raise ConfigError("train.sharding=fsdp needs a distributed run (torchrun or srun, 2+ processes) but this is "
                          "a single process: set train.sharding=none")
    settings: dict[str, Any] = {"activation_checkpointing": False, "sharding": sharding, "compile": False}
    if t.activation_checkpointing:
        from usjepa.models.checkpointing import apply_activation_checkpointing

        settings["activation_checkpointing"] = True
        settings["checkpointed_blocks"] = apply_activation_checkpointing(objective)
    if sharding == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        from usjepa.models.sharding import mixed_precision, shard_objective

        mesh = init_device_mesh(device.type, (world_size,))
        policy = mixed_precision(device.type) if amp else None
        settings["fsdp_units"] = shard_objective(objective, mesh, mp_policy=policy)
        settings["fsdp_param_dtype"] = "bf16" if policy is not None else "fp32"
        settings["teacher_placement"] = "replicated" if getattr(objective, "teacher", None) is not None else None
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


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of `module` is a DTensor (FSDP2 shard)."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters())


def full_tensors(obj: Any) -> Any:
    """The same nested structure with every DTensor gathered to its full value on the CPU (a collective: every
    rank must call it, in the same order); other values are returned unchanged."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(obj, dtensor):
        return obj.full_tensor().detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, full_tensors(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def _cut(full: Any, like: Any) -> Any:
    """`full` cut to this rank's shard of `like` (a DTensor); anything else, or a mismatched shape, unchanged
    (the strict load that follows names a mismatch)."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(like, dtensor) or not torch.is_tensor(full) or isinstance(full, dtensor):
        return full
    if tuple(full.shape) != tuple(like.shape):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_like(module: nn.Module, state: dict) -> dict:
    """A full state dict (as saved) with each entry that `module` holds sharded cut to this rank's shard."""
    own = module.state_dict()
    return {k: _cut(v, own.get(k)) for k, v in state.items()}


def shard_optimizer_like(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A full optimizer state dict (as saved) with each per-parameter tensor cut like its (sharded) parameter.

    Saved and live parameters are matched by position, as `Optimizer.load_state_dict` does."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state.get("param_groups", []) for i in g["params"]]
    if len(params) != len(saved):
        return state  # load_state_dict reports the mismatch
    per_param = dict(state.get("state", {}))
    for i, p in zip(saved, params, strict=True):
        if i in per_param:
            per_param[i] = {k: _cut(v, p) for k, v in per_param[i].items()}
    return {**state, "state": per_param}


def localise_checkpoint(ckpt: dict, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """A loaded training checkpoint ready for the (possibly sharded) modules and optimizer of this rank; the
    checkpoint itself unchanged when nothing is sharded."""
    sharded = [k for k, m in modules.items() if is_sharded(m)]
    if not sharded:
        return ckpt
    out = {**ckpt, **{k: shard_like(modules[k], ckpt[k]) for k in sharded if k in ckpt}}
    if "optimizer" in ckpt:
        out["optimizer"] = shard_optimizer_like(optimizer, ckpt["optimizer"])
    return out
