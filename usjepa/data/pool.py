"""Worker pools for the data path that never hang, whatever the parent does with signals.

A SLURM / submitit job process ignores or traps SIGTERM; workers forked from it inherit that, so the usual
`Pool.terminate()` (SIGTERM) cannot stop them and the parent waits forever. So here:
- workers start through `forkserver` (`spawn` where there is none): they do not inherit the parent's Python
  signal handlers, threads or locks; an initializer also resets SIGTERM to its default (an *ignored* signal stays
  ignored across exec) and leaves SIGINT and the preemption signals to the parent;
- the pool ends by close + join (workers leave on the end-of-work sentinel, no signal involved);
- a pool that delivers no result for `stall_s` seconds (a worker killed by the OOM killer loses its task for good)
  raises a `DataError`; its workers are then killed with SIGKILL, which nothing can ignore.

Like any spawn-started pool, a script that calls this at import time needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from usjepa.data.errors import DataError

JOIN_GRACE_S = 30.0  # after the last result: how long idle workers may take to leave before they are killed
POLL_S = 1.0  # how often the parent looks at its workers while it waits for a result


def _reset_signals() -> None:
    """Pool initializer: SIGTERM stops the worker; Ctrl-C and the preemption signals are the parent's business."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in ("SIGINT", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _context(preload: str) -> mp.context.BaseContext:
    """forkserver (its server imports `preload` once, so workers start without re-importing it), else spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([preload])  # no effect once this process's fork server runs
    return ctx


class _Star:
    """fn(*args) as a picklable one-argument callable (for imap)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Sequence[Any]) -> Any:
        return self.fn(*args)


def _kill(pool: Any) -> None:
    for p in list(getattr(pool, "_pool", [])):
        if p.exitcode is None:
            p.kill()  # SIGKILL: cannot be ignored or trapped
    pool.terminate()  # the workers are gone: this only joins the pool's threads


def _collect(pool: Any, it: Any, n: int, workers: int, stall_s: float, what: str,
             on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """The n results in order; a DataError when workers keep dying at start-up or no result comes for stall_s."""
    results: list[Any] = []
    started = {p.pid for p in pool._pool}
    last = time.monotonic()
    while len(results) < n:
        try:
            results.append(it.next(timeout=POLL_S))
            last = time.monotonic()
            if on_result is not None:
                on_result(results[-1])
            continue
        except mp.TimeoutError:
            pass
        started |= {p.pid for p in list(pool._pool)}
        if not results and len(started) > 2 * workers:
            raise DataError(f"{what}: worker processes keep exiting at start-up ({len(started)} started, no task "
                            "done). Workers start by importing the main script: if this runs from a Python script, "
                            "put its code under `if __name__ == \"__main__\":`; or use one worker "
                            "(data.sim_workers=1 / --workers 1)")
        if time.monotonic() - last > stall_s:
            raise DataError(f"{what}: no result for {stall_s:.0f} s after {len(results)} of {n} tasks (a worker may "
                            "have been killed, e.g. out of memory); run it again with fewer workers "
                            "(data.sim_workers / --workers 1)")
    return results


def starmap_bounded(fn: Callable[..., Any], jobs: Iterable[Sequence[Any]], workers: int, stall_s: float = 600.0,
                    what: str = "worker pool", on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """[fn(*job) for job in jobs] in `workers` processes, in order; DataError when no result comes for `stall_s` s.

    `fn` must be a module-level function (it is pickled by reference). Exceptions of `fn` propagate unchanged.
    `on_result` sees each result as it arrives, in order (progress bars).
    """
    jobs = list(jobs)
    if not jobs:
        return []
    ctx = _context(fn.__module__)
    pool = ctx.Pool(workers, initializer=_reset_signals)
    try:
        results = _collect(pool, pool.imap(_Star(fn), jobs, chunksize=1), len(jobs), workers, stall_s, what,
                           on_result)
        pool.close()
        deadline = time.monotonic() + JOIN_GRACE_S
        for p in list(pool._pool):
            p.join(max(0.0, deadline - time.monotonic()))
        if any(p.exitcode is None for p in pool._pool):
            _kill(pool)
        pool.join()
        return results
    except BaseException:
        _kill(pool)
        raise
