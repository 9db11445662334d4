"""Running a consumer service until it is told to stop (SIGTERM / SIGINT), then shutting down cleanly."""

from __future__ import annotations

import logging
import signal
import threading
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


def run_until_stopped(name: str, step: Callable[[], int], stop: StopFlag, close: Callable[[], None]) -> int:
    """Call ``step`` (one batch) until ``stop`` is set; returns the number of events handled."""
    handled = 0
    log.info("service started name=%s", name)
    try:
        while not stop.is_set():
            handled += step()
    finally:
        close()
        log.info("service stopped name=%s handled=%d", name, handled)
    return handled
