"""Stopping a run cleanly: SIGINT/SIGTERM finish the current batch, then the run ends with exit 130."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ..common.logs import Log


@contextmanager
def stop_on_signals(log: Log):
    """SIGINT/SIGTERM ask for a stop after the current batch (said at once); a second SIGINT aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum, _frame):
        if stop.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        stop.set()  # before the message: a second Ctrl-C while it is written must abort, not say it again
        log.event("stopping", f"{signal.Signals(signum).name}: finishing the current batch, then stopping "
                  "(its images are written; rerun to continue). Press Ctrl-C again to abort at once.")  # fmt: skip

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
