"""Failures a user can fix, and how every command line prints them: one `error: ...` line, exit status 2.

`UsjepaError` is the base of every expected failure (ConfigError, CheckpointError, DataError and the leakage
errors, TrainingError, DistributedEnvError); its message already names the file, key or value and what to do.
A few OSErrors are expected too (a full disk, a missing file, no permission): they print as one line naming
the path. Anything else is a bug and keeps its traceback. `-v` or USJEPA_DEBUG=1 shows the traceback of
expected failures as well. This module imports nothing heavy: every entry point can use it.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "USJEPA_DEBUG"

# errno -> what to do about it (the path and the system's own words come first)
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or point the output (train.out_dir, --out) at another disk",
    errno.EDQUOT: "the disk quota is used up: free space there or point the output at another file system",
    errno.ENOENT: "check the path (relative paths start from the folder you run in)",
    errno.EACCES: "you may not read or write there: fix its permissions or choose another path",
    errno.EPERM: "you may not read or write there: fix its permissions or choose another path",
    errno.EROFS: "that file system is read-only: choose a writable path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that path is a folder, but a file is needed: check the path",
    errno.EEXIST: "it already exists: choose another path or remove it first",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter path",
}


class UsjepaError(Exception):
    """An expected failure that the user can fix; the message says what, where and what to do."""


class ConfigError(UsjepaError, ValueError):
    """A configuration problem, phrased for the user: what, where, and what to do (also `usjepa.config.ConfigError`)."""


def one_line(text: str) -> str:
    """Collapse a message to one line (YAML and library errors often span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


_PATH_LOCALS = ("path", "filename", "file", "out", "dst", "target", "tmp")


def _path_in_frames(exc: BaseException, suffix: str = "") -> str | None:
    """The file a failing call was working on, from the innermost frame holding one (the OS names no file for a
    failed write(), and safetensors names none at all)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for name in _PATH_LOCALS:
            value = local.get(name)
            if isinstance(value, (str, os.PathLike)):
                text = os.fsdecode(value)
                if text and (os.sep in text or "." in text) and text.endswith(suffix):
                    found = text
                    break
        tb = tb.tb_next
    return found


def _os_message(exc: OSError) -> str | None:
    if exc.errno in OS_HINTS:
        path = exc.filename if exc.filename is not None else _path_in_frames(exc)
        where = f" '{os.fsdecode(path)}'" if path is not None else ""
        return f"{exc.strerror or os.strerror(exc.errno)}{where}: {OS_HINTS[exc.errno]}"
    if exc.errno is None and str(exc):  # raised with a message of its own, e.g. FileNotFoundError("teacher ...")
        return str(exc)
    return None


def _damaged_safetensors(exc: BaseException) -> str:
    path = _path_in_frames(exc, ".safetensors")
    where = f" '{path}'" if path else ""
    return (f"cannot read the safetensors file{where} ({one_line(str(exc))}): it is damaged, truncated or not a "
            "safetensors file; export or download it again")


def _worker_message(exc: BaseException) -> str:
    """torch's DataLoader re-raises a worker's exception with the worker's traceback as its message: keep the
    original message (the last line, 'package.DataError: <message>')."""
    text = str(exc)
    if "Original Traceback (most recent call last):" not in text:
        return text
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    head, sep, rest = last.partition(": ")
    return rest if sep and head.split(".")[-1] == type(exc).__name__ else last


def user_message(exc: BaseException) -> str | None:
    """The one-line message of an expected failure, or None when `exc` is a bug (it keeps its traceback)."""
    if isinstance(exc, UsjepaError):
        return one_line(_worker_message(exc)) or type(exc).__name__
    if isinstance(exc, OSError):
        msg = _os_message(exc)
        return one_line(msg) if msg else None
    if type(exc).__name__ == "SafetensorError":
        return _damaged_safetensors(exc)
    return None


def debug_requested(verbose: bool = False) -> bool:
    return bool(verbose) or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def report(exc: BaseException, verbose: bool = False, prog: str = "usjepa") -> int | None:
    """Print an expected failure as `error: ...` on stderr and return its exit status; None for a bug."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    msg = user_message(exc)
    if msg is None:
        return None
    _close_progress_bars()
    if debug_requested(verbose):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USER_ERROR


def _close_progress_bars() -> None:
    """End any live tqdm bar on its own line, so the error line starts a line of its own."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the error
            pass


def run_reporting(fn: Callable[[], int | None], verbose: bool = False, prog: str = "usjepa") -> int:
    """Call a command's body; expected failures become one `error:` line and status 2, bugs raise on."""
    try:
        return int(fn() or 0)
    except (Exception, KeyboardInterrupt) as e:
        code = report(e, verbose, prog)
        if code is None:
            raise
        return code
