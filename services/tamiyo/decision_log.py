"""Tamiyo's own past decisions, read back a chunk at a time when it (re)builds.

What Tamiyo already decided and commanded lives on ``control.tamiyo.decisions``. On every
(re)assignment it reads those partitions from the beginning up to their last stable offset;
``DecisionLogReader.step`` reads at most one chunk and returns within a time budget, so the
service loop stays responsive (and far under its watchdog) however long the history is.

Every record there is either one of our decisions or dead-lettered: a tombstone, bytes that
are not an event, a newer schema (an unknown fingerprint during a rolling upgrade), or an
event without a run id (``parse_decision`` says why). A bad record is skipped and the rebuild
goes on; rebuilding again must not meet it as a reason to rebuild (the livelock this replaces).

Dead-lettered once: how far the topic has been examined is committed as the ``tamiyo`` group's
offset of each decisions partition, in the same transaction as the dead letters of the records
below it (``examined_offsets`` reads it back). A rebuild, in this process or after a restart,
skips the bad records below that offset quietly; after an aborted transaction neither the dead
letters nor the offset stand, so the records are dead-lettered again, once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from contracts import AdaptationDecision
from services.oona import clients
from services.oona.codec import Codec
from services.oona.log_reader import RANGE_READER_CONFIG, ReadToEnds
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

CHUNK = 2000  # records per consume call
STEP_BUDGET_S = 2.0  # one step's reading time (the service loop's watchdog allows 60 s per step)


@dataclass(frozen=True)
class PastDecision:
    run_id: str
    decision: AdaptationDecision


def parse_decision(codec: Codec, spec: TopicSpec, value: bytes | None) -> PastDecision | str:
    """One record of the decisions topic: the decision, or the reason it cannot be one."""
    try:
        message = codec.decode(spec, value)
    except Exception as exc:  # any failure to decode these bytes is the record's, not ours
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return f"undecodable record on {spec.name}: {reason}"
    if not message.run_id:
        return f"decision {message.event_id} on {spec.name} has no run_id"
    return PastDecision(message.run_id, message.payload)


def examined_offsets(settings: KafkaSettings, group_id: str, topic: str, partitions: list[int],
                     timeout_s: float = 10.0) -> dict[int, int]:
    """Per partition, the offset below which the decisions topic was examined (0 when never)."""
    if not partitions:
        return {}
    # Asks the group coordinator without joining the group (no subscribe, nothing committed here).
    # The default isolation level (read_committed) and offset reset: nothing is read, only offsets asked for.
    consumer = clients.consumer(settings, {"group.id": group_id, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: max(0, tp.offset) for tp in found}


class DecisionLogReader:
    """The given partitions of the decisions topic, from the beginning up to ``ends`` (exclusive)."""

    def __init__(self, settings: KafkaSettings, topic: str, ends: dict[int, int]) -> None:
        self.topic = topic
        self.ends = {p: end for p, end in ends.items() if end > 0}
        self._progress = ReadToEnds({(topic, p): end for p, end in self.ends.items()})
        self.read = 0
        self.steps = 0
        self._consumer: Consumer | None = None
        if self.ends:
            self._consumer = clients.consumer(settings, RANGE_READER_CONFIG, {
                "group.id": f"tamiyo-decisions-{uuid.uuid4().hex[:8]}",
            })
            self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.ends])

    @property
    def done(self) -> bool:
        return self._progress.done

    def step(self, budget_s: float = STEP_BUDGET_S, chunk: int = CHUNK) -> list[Message]:
        """The next records (at most ``chunk``, offset order within a partition): returns as soon as some
        arrived, or after about ``budget_s`` without any."""
        got: list[Message] = []
        deadline = time.monotonic() + budget_s
        while self._consumer is not None and not self.done and not got:
            for msg in self._consumer.consume(chunk, min(0.5, budget_s)):
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # every record read has its place
                if offset < self.ends.get(partition, 0):
                    got.append(msg)
            self._progress.advance(self._consumer)
            if time.monotonic() > deadline:
                break
        self.read += len(got)
        self.steps += 1
        if self.done:
            self.close()
        return got

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
