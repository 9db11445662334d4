"""What a consumed confluent-kafka ``Message`` holds, typed as librdkafka delivers it.

confluent-kafka types ``Message`` for every use at once: ``topic()``, ``partition()`` and
``offset()`` are Optional (unset on a message built by hand), and ``headers()`` is the union
that ``Producer.produce`` accepts (a dict, str values). A message a consumer hands back without
an error has all three set, and its headers are ``(name, bytes or None)`` pairs, or None.
"""

from __future__ import annotations

from typing import cast

from confluent_kafka import Message

from services.core.errors import FatalError
from services.oona.dlq_records import Header


def position_of(msg: Message) -> tuple[str, int, int]:
    """``(topic, partition, offset)`` of a consumed message (FatalError if librdkafka left one unset)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise FatalError(f"consumed a message without a position: {topic}[{partition}]@{offset}")
    return topic, partition, offset


def headers_of(msg: Message) -> list[Header] | None:
    """A consumed message's headers: librdkafka returns a list of (name, bytes or None), or None.

    A cast, not a conversion: the stub's type is wider than what consuming returns, and this
    runs once per consumed message.
    """
    return cast("list[Header] | None", msg.headers())
