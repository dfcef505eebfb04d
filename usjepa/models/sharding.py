"""FSDP2 building blocks: the trained models sharded per block, the frozen teacher replicated or sharded.

    mesh = init_device_mesh("cuda", (world_size,))
    shard_objective(objective, mesh)                 # student + predictor (or MAE decoder): fully_shard per block
    place_teacher(objective.teacher, "cuda", mesh, mode="replicate")   # or "shard" for a teacher too large to copy

Each transformer block becomes one FSDP unit (all-gathered just before it runs, freed after), the model root a last
unit for its embeddings, norms and heads. On CUDA the parameters are gathered in bf16 and gradients reduced in
fp32 (`MixedPrecisionPolicy`); the sharded master weights and the optimizer state stay fp32, so an optimizer built
after `shard_objective` steps on fp32 shards. State-dict keys do not change (FSDP2 holds DTensors in the same
modules), and per-block activation checkpointing composes with it. The training loop owns the process group and the
optimizer (`usjepa.train.placement`).

Checkpoints are gathered full state dicts, the unsharded format: `full_tensors(module.state_dict())` (and of the
optimizer's) on every rank, rank 0 writes; `localise_checkpoint` cuts a loaded full checkpoint back to this rank's
shards (every rank reads the file, so no communication), ready for a strict `load_state_dict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from usjepa.models.layers import Block

TEACHER_MODES = ("replicate", "shard")


def mixed_precision(device_type: str):
    """bf16 parameters / fp32 gradient reduction on CUDA; fp32 throughout elsewhere (None)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device_type != "cuda":
        return None
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def block_units(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks inside `module`: entries of every `blocks` / `decoder_blocks` list (ours or timm's)."""
    units = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("blocks", "decoder_blocks"):
            units.extend(sub)
    return units or [m for m in module.modules() if isinstance(m, Block)]


def shard_module(module: nn.Module, mesh, mp_policy=None, reshard_after_forward: bool = True) -> int:
    """`fully_shard` every block inside `module`, then `module` itself; returns the number of block units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
          "mp_policy": mp_policy or MixedPrecisionPolicy()}
    blocks = block_units(module)
    for blk in blocks:
        fully_shard(blk, **kw)
    fully_shard(module, **kw)
    return len(blocks)


def _shard_frozen(module: nn.Module, mesh) -> int:
    """Shard a module that is not entered through its own `__call__` (a FrozenTeacher runs its backbone by method
    calls, which FSDP's root hooks would miss): every block, and every leaf with parameters outside the blocks
    (patch embedding, final norm). Parameters held directly by a container (a CLS token) stay replicated."""
    from torch.distributed.fsdp import fully_shard

    blocks = block_units(module)
    inside = {id(m) for b in blocks for m in b.modules()}
    leaves = [m for m in module.modules() if id(m) not in inside and next(m.children(), None) is None
              and next(m.parameters(recurse=False), None) is not None]  # listed before sharding replaces params
    for unit in [*blocks, *leaves]:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    return len(blocks)


def shard_objective(objective: nn.Module, mesh, mp_policy="auto") -> dict[str, int]:
    """Shard every trainable module of an objective (`trainable_modules()`); returns {name: block units}.

    Call it after the models are on their device and before building the optimizer. `mp_policy="auto"` picks
    `mixed_precision(mesh.device_type)`.
    """
    if mp_policy == "auto":
        mp_policy = mixed_precision(mesh.device_type)
    return {name: shard_module(module, mesh, mp_policy) for name, module in objective.trainable_modules().items()}


def place_teacher(teacher: nn.Module, device, mesh=None, mode: str = "replicate",
                  dtype: torch.dtype | None = torch.bfloat16) -> nn.Module:
    """Put a frozen teacher on `device`, its weights in `dtype` (None: keep), replicated on every rank or sharded
    per block over `mesh` (gathered one block at a time in its forward: for a teacher too large to copy).

    A frozen teacher needs no gradient synchronisation, so replication is plain: each rank holds the same weights.
    bf16 weights need the teacher to run in bf16 (`precision` bf16, or auto on a device with bf16 units).
    """
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher placement '{mode}' is not one of {', '.join(TEACHER_MODES)}")
    device = torch.device(device)
    if dtype not in (None, torch.float32) and hasattr(teacher, "runs_bf16") and not teacher.runs_bf16(device):
        raise ValueError(f"a {dtype} teacher must run under bf16 autocast, but its precision is "
                         f"'{getattr(teacher, 'precision', '?')}' on {device}; set teacher.precision=bf16 or keep fp32")
    teacher.to(device)
    if dtype is not None:  # the network's weights; a FrozenTeacher's input statistics stay float32
        getattr(teacher, "backbone", teacher).to(dtype)
    if mode == "shard":
        if mesh is None:
            raise ValueError("teacher placement 'shard' needs the device mesh")
        _shard_frozen(teacher, mesh)
    return teacher


# ----------------------------------------------------------------------------- gathered state dicts


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support: nothing can be sharded
        return None
    return DTensor


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
