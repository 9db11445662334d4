"""Waiting on a condition with a deadline: the one helper the tests use for states that send no
notification (the process table, a process's open files)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """``condition()``'s first truthy value; fails the test when ``timeout_s`` passes first.

    Each poll is a read of the state itself, so the loop ends the moment it holds.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s:g}s"
    return value
