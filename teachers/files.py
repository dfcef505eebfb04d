"""Reading teacher checkpoint files: `torch.load(weights_only=True)` or safetensors, never arbitrary pickles.

Every failure is a `CheckpointError` whose message names the file and says what to do: a pickle that
needs Python classes names them (from torch's own refusal) and gives the two-line conversion to run in a
trusted environment; a safetensors file is checked (header length, JSON, dtypes, shapes, byte ranges that
must tile the data without overlap or gaps) before any tensor is read, so a damaged or crafted header is
refused by name instead of failing deep inside a reader or allocating what it claims.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from usjepa.models.checkpoint_io import CheckpointError

# Plain-data classes that training scripts store beside the weights (MAE / UltraFedFM / timm's train.py save
# `args`, an argparse.Namespace). Rebuilding one only sets attributes, so the weights-only unpickler may allow it.
SAFE_EXTRA_GLOBALS = (argparse.Namespace,)
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_PLAIN = ("builtins.", "collections.", "typing.", "argparse.Namespace")


def describe(path: str | Path) -> str:
    return f"teacher checkpoint '{path}'"


def is_safetensors(path: Path) -> bool:
    """By suffix, or by the format's signature: a little-endian header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(10)
    return len(head) == 10 and head[8:10] in (b'{"', b"{}") and struct.unpack("<Q", head[:8])[0] < MAX_HEADER_BYTES


def safetensors_header(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, {name: shape}) of a safetensors file, validated without reading any tensor data."""
    path = Path(path)
    bad = f"{describe(path)} is not a valid safetensors file"
    fix = "it is damaged, truncated or was not written by safetensors; download or export it again"
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{bad}: {size} bytes is shorter than the 8-byte header length; {fix}")
        n = struct.unpack("<Q", raw)[0]
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{bad}: its header claims {n} bytes but the file holds {size}; {fix}")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{bad}: its header is not JSON ({e}); {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad}: its header is not a JSON object; {fix}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{bad}: __metadata__ must map names to strings; {fix}")
    data_len = size - 8 - n
    spans, shapes = [], {}
    for name, entry in header.items():
        where = f"{bad}: tensor '{name}'"
        if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where} has no known dtype ({str(entry)[:80]}); {fix}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(f"{where} has an invalid shape {shape}; {fix}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{where} has byte range {offsets} outside the {data_len} data bytes; {fix}")
        need = math.prod(shape) * SAFETENSORS_DTYPES[entry["dtype"]]
        if offsets[1] - offsets[0] != need:
            raise CheckpointError(f"{where}: shape {shape} {entry['dtype']} needs {need} bytes but its range "
                                  f"{offsets} holds {offsets[1] - offsets[0]}; {fix}")
        spans.append((offsets[0], offsets[1], name))
        shapes[name] = tuple(shape)
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            what = "overlaps the tensor before it" if start < end else f"leaves a gap of {start - end} bytes"
            raise CheckpointError(f"{bad}: tensor '{name}' (bytes {start}..{stop}) {what}; {fix}")
        end = stop
    if end != data_len:
        raise CheckpointError(f"{bad}: its tensors cover {end} of the {data_len} data bytes; {fix}")
    return meta, shapes


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    safetensors_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{describe(path)} could not be read as safetensors ({_first_line(e)}); it is "
                              "damaged or truncated: download or export it again") from None


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def blocking_classes(path: Path, err: BaseException) -> list[str]:
    """The Python classes a pickle needs beyond plain data: the one torch refused first, then the others."""
    first = _GLOBAL.findall(_ANSI.sub("", str(err)))
    try:
        with torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            more = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001  (legacy file formats: the refused class alone is enough)
        more = []
    out = []
    for name in first + sorted(more):
        if name not in out and not (name.startswith(_PLAIN) and name not in first):
            out.append(name)
    return out


def pickle_refusal(path: Path, err: BaseException) -> str:
    """One line naming the blocking classes, then the two-line conversion for a trusted environment."""
    classes = blocking_classes(path, err)
    what = (f"these Python classes: {', '.join(classes[:6])}{' ...' if len(classes) > 6 else ''}" if classes
            else f"Python objects torch's weights-only loader refuses ({_first_line(err)})")
    stem = path.with_suffix("")
    return (f"refusing to load {describe(path)}: it is a pickle that needs {what}; unpickling them could run "
            f"code. If you trust the file, convert it once in a trusted environment and load the result:\n"
            f"    ckpt = torch.load('{path}', map_location='cpu', weights_only=False)  # trusted files only\n"
            f"    torch.save(ckpt['model'], '{stem}.weights.pth')  # the entry holding the weights (see "
            f"ckpt.keys()); or safetensors.torch.save_file(ckpt['model'], '{stem}.safetensors')")


def read_checkpoint(path: str | Path, mmap: bool = False) -> Any:
    """The raw checkpoint object, via `torch.load(weights_only=True)` or safetensors (never arbitrary pickles).

    `mmap=True` maps the tensors of a zip-format file instead of reading them (for a look at shapes only).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{describe(path)} does not exist; set teacher.checkpoint to the downloaded file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{describe(path)} is empty (0 bytes); it was probably cut off while being written")
    if is_safetensors(path):
        return read_safetensors(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(pickle_refusal(path, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        raise CheckpointError(f"{describe(path)} is unreadable or truncated ({_first_line(e)}); download or save "
                              "it again") from None
