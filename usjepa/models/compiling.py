"""torch.compile of an objective's networks in place: the trained modules, an EMA target, a frozen teacher.

    compile_objective(objective)                  # inductor, the default backend: what `train.compile=true` does

`Module.compile()` compiles a module's `__call__` without wrapping it, so parameter names and state-dict keys do not
change and checkpoints written with and without compile load into each other. The student, the predictor (or MAE
decoder) and an EMA target are called as modules, so that covers them. A FrozenTeacher is entered through
`tokens_on_grid` -> `self.forward(...)`, a method call that `Module.compile` would not see, so its `forward` itself is
replaced by a compiled one. Call it after activation checkpointing and FSDP have been applied: both compose with it.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_objective(objective: nn.Module, backend: str = "inductor") -> list[str]:
    """Compile every network of `objective` in place with `backend`; returns the names of what was compiled."""
    done = []
    parts = {**objective.trainable_modules(), **objective.frozen_state()}
    for name, module in parts.items():
        module.compile(backend=backend)
        done.append(name)
    teacher = getattr(objective, "teacher", None)
    if teacher is not None:
        teacher.forward = torch.compile(teacher.forward, backend=backend)
        done.append("teacher")
    return done
