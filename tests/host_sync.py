"""A CPU stand-in for `torch.cuda.set_sync_debug_mode("error")`: fail on every op that reads tensor data back to the
host (`.item()`, `bool(t)`, `.tolist()` / `.cpu()` of a device tensor, `nonzero`, boolean indexing, ...).

Run the code under test on the meta device inside `no_host_sync()`: meta tensors have no data, so any path that
needs a value fails there even when it slips past the dispatcher (a CPU tensor's `.tolist()` reads memory directly),
and the mode names the data-dependent aten ops that would stall a GPU stream.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops whose output size or value depends on tensor data: on a GPU each one waits for the stream to drain
DATA_DEPENDENT = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.argwhere.default,
    aten.masked_select.default,
    aten.equal.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class HostSyncError(AssertionError):
    pass


class no_host_sync(TorchDispatchMode):  # noqa: N801 - used as a context manager
    """Raise HostSyncError on a data-dependent op, a boolean index, or a device-to-host copy."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DATA_DEPENDENT:
            raise HostSyncError(f"host sync: {func} reads tensor data on the host")
        if func in BOOL_INDEXED:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            masks = [i for i in indices if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)]
            if masks:
                raise HostSyncError(f"host sync: {func} with a boolean index (a hidden nonzero)")
        out = func(*args, **kwargs)
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = args[0] if func is aten.copy_.default else out
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst.device.type == "cpu":
                raise HostSyncError(f"host sync: {func} copies a {src.device.type} tensor to the host")
        return out


__all__ = ["HostSyncError", "no_host_sync"]
