"""A checksum of a checkpoint's contents (every tensor's bytes, dtype and shape, and every plain value).

Stored inside the checkpoint under `DIGEST_KEY` and recomputed on load, so silent bit rot in a tensor, which
`torch.load` does not notice, is caught. It hashes what was saved, not the file's bytes, so the digest and the
data it covers are written in one atomic rename (a separate checksum file could disagree after a kill).
"""

from __future__ import annotations

import hashlib
from typing import Any

DIGEST_KEY = "digest"
ALGORITHM = "sha256"


def _feed(h: Any, obj: Any) -> None:
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(k).__name__}:{k}".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:  # int, float, bool, str, None, dtype... : their repr is exact and survives a save/load round trip
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def state_digest(state: dict) -> str:
    """Hex digest of everything in `state` except its own digest entry."""
    h = hashlib.new(ALGORITHM)
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def with_digest(state: dict) -> dict:
    """`state` plus its digest (a new dict; the input is not changed)."""
    return {**state, DIGEST_KEY: {"algorithm": ALGORITHM, "value": state_digest(state)}}


def digest_problem(state: dict) -> str | None:
    """None when the stored digest matches the contents, else what is wrong (missing, unknown, mismatch)."""
    stored = state.get(DIGEST_KEY)
    if not isinstance(stored, dict) or "value" not in stored:
        return "it has no checksum"
    if stored.get("algorithm") != ALGORITHM:
        return f"its checksum algorithm '{stored.get('algorithm')}' is unknown (this usjepa uses {ALGORITHM})"
    if state_digest(state) != stored["value"]:
        return "its contents do not match the stored checksum (the file was damaged after it was written)"
    return None
