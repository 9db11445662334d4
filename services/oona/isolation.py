"""Per-record failure isolation: is an exception one record's fault (dead-letter it, go on) or the bus's?

Kafka Streams' processing-exception handler, decided once for every Esper consumer. A record
whose handling raises is dead-lettered with the exception's type and message and the consumer
goes on; retrying it would raise again, and stopping would meet it again after every restart
(a crash loop). Errors of the bus itself are never a record's fault and are never dead-lettered:
a ``KafkaException`` (transient, fenced, fatal alike) or the ``KafkaClientError`` made of one, a
``DeliveryError`` (the broker refused what we produced) and a ``FatalError`` (stop the service)
propagate as before, and so does anything that is not an ``Exception`` (KeyboardInterrupt, SystemExit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from confluent_kafka import KafkaException

from services.core.errors import DeliveryError, FatalError, KafkaClientError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_REASON_CHARS = 4000  # what a DLQ reason header keeps


def is_record_failure(exc: BaseException) -> bool:
    """True when ``exc``, raised while handling one record, is that record's fault.

    MemoryError and RecursionError count as the record's: they come from what the record asks
    for (a huge width, a deep blueprint) and would come back with it after a restart.
    """
    if not isinstance(exc, Exception):
        return False
    return not isinstance(exc, (KafkaException, KafkaClientError, DeliveryError, FatalError))


def failure_reason(exc: BaseException) -> str:
    """The dead letter's reason: exception type and message (``ValueError: negative dimension``)."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_REASON_CHARS]


def replay_skipping_failures(records: Iterable[T], apply: Callable[[T], object], what: str) -> int:
    """Apply already-consumed records to rebuild state at start-up; returns how many applied.

    A record that fails here failed (and was dead-lettered) when it was first consumed: it is
    skipped with a log line, never dead-lettered twice, and never stops the start-up.
    """
    applied = 0
    for record in records:
        try:
            apply(record)
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            log.warning("replay skipped a record what=%s reason=%s", what, failure_reason(exc))
            continue
        applied += 1
    return applied
