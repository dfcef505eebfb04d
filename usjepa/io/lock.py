"""One run per folder: an exclusive `flock` on `<run folder>/run.lock`, held for the whole run.

The kernel drops an flock when its holder dies, `kill -9` included, so the lock can never go stale; the lock
file only records who holds it (host, pid, SLURM job) for the refusal message. Re-entrant within a process
(the SLURM job wrapper and the trainer both take it); forked children (data-loader workers) close their copies,
so the lock goes with its holder. On a file system without flock (some Lustre mounts
`-o noflock`, old NFS without lockd) locking fails with ENOLCK / ENOSYS / EOPNOTSUPP: the run goes on unlocked
with a warning, and two runs in one folder are then not stopped.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from usjepa.errors import ConfigError
from usjepa.io.atomic import new_file_mode

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_HELD: dict[str, list[int]] = {}  # lock file (real path) -> [fd, depth], for this process


class FolderBusy(ConfigError):
    """Another run holds the run folder."""


def _close_in_child() -> None:
    """A forked child (data-loader worker, worker pool) closes its copies of the lock fds: the lock then dies with
    the process that took it, not with the last of its children (the parent's own fds keep it held)."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder_fields() -> dict:
    """Who this process is, as recorded in the lock file."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job, "since": time.time()}


def describe_holder(doc: dict | None) -> str:
    if not doc:
        return "another process (it recorded no details)"
    parts = [f"host {doc.get('host', '?')}", f"pid {doc.get('pid', '?')}"]
    if doc.get("slurm_job"):
        parts.append(f"SLURM job {doc['slurm_job']}")
    if doc.get("since"):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(doc["since"]))))
    return ", ".join(parts)


class FolderLock:
    """`with FolderLock(folder):` holds the folder for this process or raises FolderBusy naming the holder."""

    def __init__(self, folder: str | Path, name: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.locked = False  # True once held (False when the file system has no flock)

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def read_holder(self) -> dict | None:
        try:
            doc = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def held_here(self) -> bool:
        return self._key() in _HELD

    def acquire(self) -> bool:
        """Take the lock (True), or go on unlocked where the file system cannot lock (False, logged)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self._key()
        if key in _HELD:
            _HELD[key][1] += 1
            self.locked = True
            return True
        for _ in range(3):  # retry when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, new_file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(
                    f"run folder '{self.folder}' is in use by {describe_holder(self.read_holder())}; wait for that "
                    "run to end (or cancel it), or point train.out_dir at another folder"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno in _UNSUPPORTED:
                    log.warning("cannot lock '%s' (%s): this file system has no flock, so a second run in the same "
                                "folder would not be stopped", self.path, e.strerror)
                    return False
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_fields()).encode(), 0)
            _HELD[key] = [fd, 1]
            self.locked = True
            return True
        raise FolderBusy(f"could not lock '{self.path}': the file keeps being replaced by another process")

    def release(self) -> None:
        key = self._key()
        entry = _HELD.get(key)
        if not self.locked or entry is None:
            return
        self.locked = False
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        fd = entry[0]
        try:
            os.ftruncate(fd, 0)  # no stale holder details; the file itself stays (deleting it would race)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def busy_holder(self) -> dict | None:
        """Who holds the folder when another process does (without taking it), else None."""
        if self.held_here() or not self.path.exists():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.read_holder() or {}
        except OSError:
            return None
        finally:
            os.close(fd)
        return None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
