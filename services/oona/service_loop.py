"""Running a consumer service until it is told to stop (SIGTERM / SIGINT), then shutting down cleanly."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT (or by a test); loops check it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.set())


STALL_TIMEOUT_S = 60.0


def _watchdog(name: str, busy_since: list[float | None], done: threading.Event, stall_timeout_s: float) -> None:
    """Ends the process when one step hangs: a client call stuck after a broker restart can block
    far beyond its timeout. The supervisor restarts the service, which rebuilds from the log."""
    while not done.wait(1.0):
        since = busy_since[0]
        if since is not None and time.monotonic() - since > stall_timeout_s:
            log.error("service=%s: one step has been running for %.0fs; exiting to be restarted", name,
                      time.monotonic() - since)
            logging.shutdown()
            os._exit(70)


def run_until_stopped(name: str, step: Callable[[], int], stop: StopFlag, close: Callable[[], None],
                      stall_timeout_s: float = STALL_TIMEOUT_S) -> int:
    """Call ``step`` (one batch) until ``stop`` is set; returns the number of events handled."""
    handled = 0
    busy_since: list[float | None] = [None]
    done = threading.Event()
    threading.Thread(target=_watchdog, args=(name, busy_since, done, stall_timeout_s), daemon=True).start()
    log.info("service started name=%s", name)
    try:
        while not stop.is_set():
            busy_since[0] = time.monotonic()
            handled += step()
            busy_since[0] = None
    finally:
        done.set()
        close()
        log.info("service stopped name=%s handled=%d", name, handled)
    return handled
