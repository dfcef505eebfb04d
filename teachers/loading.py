"""Checkpoint plumbing shared by the teacher families: unwrap, strip prefixes, drop pretraining-only keys,
check every key strictly, and resample position encodings for other patch grids.

Nothing here guesses silently: a wrapper or prefix is removed only as a wrapper or a prefix, a key is
dropped only when it matches the family's drop-list (or one the caller named), and any missing,
unexpected or mis-shaped key is reported by name.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usjepa.models.checkpoint_io import CheckpointError

# Where state dicts hide inside training checkpoints, tried in this order (families reorder them).
WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "module", "teacher", "target_encoder", "encoder", "weights")
# Prefixes that wrappers (DDP, torch.compile, detection/MIM frameworks) put in front of every key.
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "backbone.", "model.", "encoder.")


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def unwrap(obj: Any, keys: Sequence[str], source: str, which: str = "") -> tuple[dict[str, Tensor], list[str]]:
    """Descend through wrapper dicts to the state dict: `which` if given, else the first of `keys` present.

    Returns (state dict, the wrapper keys taken). Non-tensor entries beside a state dict (epoch, args
    strings) are what makes a dict a wrapper; a state dict itself must hold tensors only.
    """
    trail: list[str] = []
    if which:
        if not isinstance(obj, dict) or which not in obj:
            top = list(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{source} has no entry '{which}' (top-level keys: {top}); set the `which` option "
                                  "to one of those keys")
        obj = obj[which]
        trail.append(which)
    for _ in range(4):
        if is_state_dict(obj):
            return dict(obj), trail
        if not isinstance(obj, dict):
            break
        nxt = next((k for k in keys if k in obj and isinstance(obj[k], dict)), None)
        if nxt is None:
            break
        obj = obj[nxt]
        trail.append(nxt)
    if is_state_dict(obj):
        return dict(obj), trail
    if isinstance(obj, dict):
        shown = {k: type(v).__name__ for k, v in list(obj.items())[:12]}
        raise CheckpointError(f"{source}{' [' + '/'.join(trail) + ']' if trail else ''} holds no state dict of tensors "
                              f"(entries: {shown}); tried wrapper keys {list(keys)}. Set `which` to the entry that "
                              "holds the weights")
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a dict of tensors; save the model with "
                          "torch.save(model.state_dict()) or safetensors")


def strip_prefixes(state: dict[str, Tensor], prefixes: Iterable[str],
                   source: str) -> tuple[dict[str, Tensor], list[str]]:
    """Remove wrapper prefixes from the start of keys (repeatedly, e.g. `module.backbone.`); never mid-key."""
    prefixes = tuple(p for p in prefixes if p)
    out: dict[str, Tensor] = {}
    seen: set[str] = set()
    for k, v in state.items():
        new = k
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if new.startswith(p) and len(new) > len(p):
                    new = new[len(p):]
                    seen.add(p)
                    changed = True
        if new in out:
            raise CheckpointError(f"{source}: stripping prefixes {sorted(seen)} makes two keys collide at '{new}'; "
                                  "set the `prefixes` option to the wrapper prefix this file really uses")
        out[new] = v
    return out, sorted(seen)


def drop_keys(state: dict[str, Tensor], patterns: Iterable[str]) -> tuple[dict[str, Tensor], list[str]]:
    """Split off keys matching any glob pattern (fnmatch, e.g. `decoder_*`, `*relative_position_index`)."""
    patterns = tuple(patterns)
    kept, dropped = {}, []
    for k, v in state.items():
        if any(fnmatch.fnmatchcase(k, p) for p in patterns):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def collapse_blocks(keys: list[str], universe: Iterable[str]) -> list[str]:
    """Name a whole missing (or unexpected) block once as `blocks.<i>.*`; other keys stay as they are."""
    def block_of(k: str) -> str | None:
        parts = k.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else None

    per_block: dict[str, int] = {}
    for k in universe:
        b = block_of(k)
        if b:
            per_block[b] = per_block.get(b, 0) + 1
    hits: dict[str, int] = {}
    for k in keys:
        b = block_of(k)
        if b:
            hits[b] = hits.get(b, 0) + 1
    whole = {b for b, n in hits.items() if n == per_block.get(b)}
    out, done = [], set()
    for k in keys:
        b = block_of(k)
        if b in whole:
            if b not in done:
                out.append(f"{b}.* ({per_block[b]} keys)")
                done.add(b)
        else:
            out.append(k)
    return out


@dataclass
class KeyReport:
    """What a strict load found: every list names keys, so a user can act on it."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (a, b) vs model (c, d)"
    dropped: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    wrappers: list[str] = field(default_factory=list)
    model_keys: list[str] = field(default_factory=list, repr=False)
    file_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def error(self, family: str, drop: Sequence[str]) -> CheckpointError:
        def show(keys: list[str], n: int = 16) -> str:
            return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")

        parts = []
        if self.missing:
            parts.append(f"missing encoder keys ({len(self.missing)}): "
                         f"{show(collapse_blocks(self.missing, self.model_keys or self.missing))}")
        if self.unexpected:
            parts.append(f"unexpected keys not on the '{family}' drop-list {list(drop)} ({len(self.unexpected)}): "
                         f"{show(collapse_blocks(self.unexpected, self.file_keys or self.unexpected))}")
        if self.mismatched:
            parts.append(f"shape mismatches ({len(self.mismatched)}): {'; '.join(self.mismatched[:8])}")
        hint = (f"Check that the file is a '{family}' checkpoint and the architecture options (arch, embed_dim, depth, "
                "num_heads) match it; `usjepa teacher inspect FILE` shows what it holds. Keys you know to be "
                "unused can be named in the `drop` option.")
        head = f"{self.source} does not load as a '{family}' teacher: "
        return CheckpointError(head + " | ".join(parts) + ". " + hint)

    def as_dict(self) -> dict:
        return {"missing": self.missing, "unexpected": self.unexpected, "mismatched": self.mismatched,
                "dropped": self.dropped, "prefixes_stripped": self.prefixes, "wrappers": self.wrappers}


def compare_keys(own: dict[str, Tensor], state: dict[str, Tensor], *, drop: Sequence[str],
                 report: KeyReport) -> dict[str, Tensor]:
    """Drop allowed keys and record every missing, unexpected and mis-shaped key; returns what is left to load."""
    state, dropped = drop_keys(state, drop)
    report.dropped = dropped
    report.model_keys, report.file_keys = list(own), list(state)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return state


def build_and_load(make: Callable[[], nn.Module], state: dict[str, Tensor], *, drop: Sequence[str], source: str,
                   family: str, strict: bool = True, report: KeyReport | None = None) -> tuple[nn.Module, KeyReport]:
    """Build `make()` and load `state` into it, checking every shape before any memory is allocated.

    The network is first built on the meta device (shapes only), so a file whose keys or shapes do not
    match, or whose metadata claims a network far larger than its tensors, is refused without allocating
    it. Only a file that matches is built for real and loaded; then the network is no larger than the
    file's own tensors. With `strict=False` a bad match returns the meta shell and the report (inspection).
    """
    report = report or KeyReport(source)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # initialisers warn about zero-element tensors a crafted file can declare
        shell = make()
    state = compare_keys(shell.state_dict(), state, drop=drop, report=report)
    if not report.ok:
        if strict:
            raise report.error(family, drop)
        return shell, report
    del shell
    model = make()
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return model, report


def load_weights(model: nn.Module, state: dict[str, Tensor], *, drop: Sequence[str], source: str, family: str,
                 strict: bool = True, report: KeyReport | None = None) -> KeyReport:
    """Load `state` into an already built `model` when every key and shape matches (else report / raise)."""
    report = report or KeyReport(source)
    own = model.state_dict()
    state = compare_keys(own, state, drop=drop, report=report)
    if not report.ok:
        if strict:
            raise report.error(family, drop)
        return report
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return report


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (identifies a teacher checkpoint for the target cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- resampling


def resample_grid_embed(pos: Tensor, old: tuple[int, int], new: tuple[int, int], mode: str = "bicubic",
                        antialias: bool = False, offset: float = 0.0) -> Tensor:
    """Patch position embeddings [1, h*w, D] from grid `old` to grid `new` (no prefix slots).

    `offset` > 0 reproduces DINO/DINOv2: interpolation by scale factor (new + offset) / old instead of by
    output size (their `interpolate_offset`, 0.1), which shifts the sampling points slightly.
    """
    if tuple(old) == tuple(new):
        return pos
    d = pos.shape[-1]
    x = pos.float().reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)  # [1, D, h, w]
    if offset:
        scale = ((new[0] + offset) / old[0], (new[1] + offset) / old[1])
        x = F.interpolate(x, scale_factor=scale, mode=mode, antialias=antialias)
    else:
        x = F.interpolate(x, size=tuple(new), mode=mode, antialias=antialias, align_corners=False)
    if tuple(x.shape[-2:]) != tuple(new):
        raise RuntimeError(f"position resampling gave grid {tuple(x.shape[-2:])}, expected {tuple(new)}")
    return x.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(pos.dtype)


def rel_pos_bias(table: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """BEiT relative-position bias [H, N+1, N+1] for grid `new` from a table [(2h-1)(2w-1)+3, H] made for `old`.

    The table is resized with timm's geometric-progression interpolation (the scheme BEiT and USFM use)
    when the grid changes; the index follows BEiT (3 extra entries: cls->token, token->cls, cls->cls).
    """
    from timm.layers import resize_rel_pos_bias_table
    from timm.models.beit import gen_relative_position_index

    heads = table.shape[-1]
    n_rel = (2 * new[0] - 1) * (2 * new[1] - 1) + 3
    if tuple(old) != tuple(new):
        with warnings.catch_warnings():  # timm's torch interpolator warns about its own indexing style
            warnings.filterwarnings("ignore", message=r".*(non-contiguous|non-tuple sequence).*")
            table = resize_rel_pos_bias_table(table, new_window_size=tuple(new), new_bias_shape=(n_rel, heads),
                                              old_window_size=tuple(old))
    index = gen_relative_position_index(tuple(new), device=table.device)  # [N+1, N+1], BEiT's cls-aware index
    n = new[0] * new[1] + 1
    return table[index.view(-1)].view(n, n, heads).permute(2, 0, 1).contiguous()  # [H, N+1, N+1]


def rel_table_grid(table: Tensor, source: str) -> tuple[int, int]:
    """The square window a BEiT bias table [(2s-1)^2 + 3, H] was made for."""
    side = math.isqrt(table.shape[0] - 3)
    if side * side != table.shape[0] - 3 or side % 2 == 0:
        raise CheckpointError(f"{source}: relative_position_bias_table has {table.shape[0]} rows, which is not "
                              "(2s-1)^2 + 3 for a square grid; set the `native_grid` option")
    s = (side + 1) // 2
    return s, s
