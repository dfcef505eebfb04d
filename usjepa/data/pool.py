"""The worker pool of `usjepa data prepare`: processes that a stop never has to signal politely.

Workers start by forkserver (spawn where there is none), so they inherit no signal handlers or threads of the
parent, and reset their own (SIGTERM default, SIGINT left to the parent, one thread each). The pool is closed and
joined with a timeout; past it, or on any error in the parent, its processes are killed by handle (SIGKILL) and
reaped. A worker that dies mid-job is one clear error; finished shards stay, so the same command continues.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from usjepa.data.errors import DataError

JOIN_TIMEOUT_S = 60.0


def _worker_init() -> None:
    """Workers: default SIGTERM (a plain kill ends them), SIGINT left to the parent, one thread each."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    import torch

    torch.set_num_threads(1)


def _kill(ex: ProcessPoolExecutor) -> None:
    """Stop our own workers by handle (SIGKILL: no handler can hold it) and reap them."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)


def _close(ex: ProcessPoolExecutor, timeout: float) -> None:
    """Close the pool and join its workers within `timeout` seconds; a clear error (workers killed) past it."""
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        _kill(ex)
        raise DataError(f"prepare worker processes did not exit within {timeout:.0f} s after their work ended and "
                        "were stopped; every finished shard is kept: run the same command again to finish")


def run_jobs(fn: Callable[[dict], dict], jobs: list[dict], workers: int,
             on_shard: Callable[[dict], None] | None = None, join_timeout: float = JOIN_TIMEOUT_S) -> list[dict]:
    """fn(job) for every shard job (a dict with "shard"), in this process (workers <= 1) or in a forkserver / spawn
    pool of `workers` processes; their results in shard order. `fn` must be importable (a module-level function)."""
    done = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done.append(fn(job))
            if on_shard:
                on_shard(done[-1])
        return done
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ex = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(method), initializer=_worker_init)
    try:
        futures = {ex.submit(fn, job): job["shard"] for job in jobs}
        for f in as_completed(futures):
            try:
                done.append(f.result())
            except BrokenProcessPool:
                raise DataError(f"a prepare worker process died (killed, or out of memory) while writing shard "
                                f"{futures[f]}; every finished shard is kept: run the same command again to "
                                "finish") from None
            except (DataError, OSError) as e:
                raise DataError(f"writing shard {futures[f]} failed: {e}; every finished shard is kept") from None
            if on_shard:
                on_shard(done[-1])
    except BaseException:
        _kill(ex)
        raise
    _close(ex, join_timeout)
    return sorted(done, key=lambda s: s["shard"])
