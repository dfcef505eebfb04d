"""Atomic file writes: a temp file beside the target, fsync, the user's file mode, rename over the target.

Readers never see half a file; a failed or killed writer leaves the old file as it was (a kill can leave the
temp file `.NAME.tmp<pid>-<hex>`, which `temp_files_of` finds so that the owner can clean it on start). New
files get the mode the user's umask gives (0644 under umask 022), not the 0600 of `mkstemp` or of writers that
create their files privately; a file that already exists keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where /proc says it (Linux), else set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def temp_path_for(path: Path) -> Path:
    """A temp name beside `path`, unique per process and call: `.NAME.tmp<pid>-<hex>`."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(3)}")


def temp_files_of(folder: Path, names: list[str] | tuple[str, ...]) -> list[Path]:
    """Temp files left beside `names` in `folder` by writers that were killed (this helper's and older names)."""
    folder = Path(folder)
    out = []
    for name in names:
        out.extend(p for p in folder.glob(f".{name}.tmp*") if p.is_file())
    return sorted(set(out))


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; file systems that cannot sync a folder are left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _final_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return new_file_mode()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str | None = "wb", fsync: bool = True) -> Iterator[Any]:
    """Write `path` atomically. Yields an open file (mode "w" or "wb"), or with mode=None the temp Path itself
    for writers that take a file name (safetensors, matplotlib). On error the temp file is removed and the
    error re-raised; `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    target_mode = _final_mode(path)
    try:
        if mode is None:
            yield tmp
            if fsync:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        else:
            if mode not in ("w", "wb"):
                raise ValueError(f"atomic_write mode must be 'w', 'wb' or None, got '{mode}'")
            f: IO
            with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
                yield f
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        os.chmod(tmp, target_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode(), fsync=fsync)


def atomic_write_json(path: str | Path, doc: Any, indent: int | None = 2, fsync: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=indent, default=str), fsync=fsync)


def overwrite_in_place(path: str | Path, data: bytes) -> None:
    """Rewrite an existing small file through its own blocks (no new file, no new inode).

    The last resort when a temp file cannot be created, e.g. on a full disk: a status file of a few hundred
    bytes fits in the block it already has. Not atomic: only for files whose readers tolerate a torn read.
    """
    path = Path(path)
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
