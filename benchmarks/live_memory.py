"""Peak bytes of live tensors, counted op by op: a deterministic, device-independent stand-in for
`torch.cuda.max_memory_allocated()` (CPU allocators keep no such statistic, and a process's resident size moves
with the allocator's caching and the machine's other work).

Every storage an op creates inside the region is counted from the op that makes it until it is freed (a weak
reference's callback); storages that existed before (parameters, inputs) and outputs that alias an input (views,
in-place ops) are not. Activations kept for backward, temporaries, gradients and recomputed blocks all count.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorMemory(TorchDispatchMode):
    """`with LiveTensorMemory() as mem: ...` then `mem.peak_bytes` (and `mem.current_bytes` still alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def _free(self, key: int) -> None:
        self.current_bytes -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                  and t.device.type != "meta"}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in inputs or key in self.sizes:
                continue
            self.sizes[key] = storage.nbytes()
            self.current_bytes += storage.nbytes()
            weakref.finalize(storage, self._free, key)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out
