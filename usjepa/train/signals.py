"""Stop signals: the handler only records that a stop was asked for; the trainer saves at the next step boundary.

SIGTERM (scancel, `scontrol requeue`, preemption with a grace time, a plain `kill`), SIGINT (Ctrl-C) and the
preemption signal of the SLURM wrapper (USR2) all end a run the same way: the current step finishes, latest.pt
is written, status.json says "preempted". A second Ctrl-C stops at once (KeyboardInterrupt). Data-loader workers
ignore these signals (`ignore_stop_signals`): SLURM signals every process of a job step, and a worker that died of
it would take the step, and the save, with it; the main process shuts its workers down itself. Any other forked
child that inherits the handler (a multiprocessing pool's worker) dies of the signal as by default, so
`pool.terminate()` still works while the flag is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """`flag()` says whether one of the installed signals came; `flag.signals` lists them in arrival order."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __call__(self) -> bool:
        return bool(self.signals)

    @property
    def signum(self) -> int | None:
        """The first stop signal received (None before any)."""
        return self.signals[0] if self.signals else None

    @property
    def reason(self) -> str | None:
        return signal.Signals(self.signum).name if self.signals else None

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked child (a worker pool) inherited the handler: die as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT and signal.SIGINT in self.signals:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second Ctrl-C: stopping without saving")
        self.signals.append(signum)
        name = signal.Signals(signum).name
        more = " (Ctrl-C again to stop without saving)" if signum == signal.SIGINT else ""
        os.write(2, f"usjepa: caught {name}; saving at the next step boundary{more}\n".encode())

    def install(self, *signums: int) -> StopFlag:
        """Handle `signums` until `restore()`; outside the main thread (where Python cannot) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: stop signals stay with their current handlers")
            return self
        self._pid = os.getpid()
        for s in signums:
            if s not in self._previous:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def ignore_stop_signals(*_: Any) -> None:
    """worker_init_fn of the data loaders: workers outlive SIGTERM / SIGINT; their parent stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
