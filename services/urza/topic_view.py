"""Follow a whole topic from its beginning without a consumer group (projections rebuilt from the log)."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from contracts import OonaMessage
from services.oona.admin import admin_client, end_offsets
from services.oona.codec import Codec
from services.oona.errors import DecodeError
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec


class TopicView:
    def __init__(self, settings: KafkaSettings, codec: Codec, spec: TopicSpec) -> None:
        self.codec = codec
        self.spec = spec
        self.messages: list[OonaMessage] = []
        self._consumer = Consumer(settings.client_config() | {
            "group.id": f"view-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })
        partitions = self._consumer.list_topics(spec.name, timeout=10).topics[spec.name].partitions
        ends = end_offsets(admin_client(settings), [(spec.name, p) for p in partitions])
        self._ends = {p: ends[(spec.name, p)] for p in partitions}
        self._consumer.assign([TopicPartition(spec.name, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout: float = 0.2) -> list[OonaMessage]:
        """Read what arrived; returns the new messages (undecodable ones are skipped)."""
        new = []
        for msg in self._consumer.consume(1000, timeout):
            if msg.error() is not None or msg.value() is None:
                continue
            try:
                new.append(self.codec.decode(self.spec, msg.value()))
            except DecodeError:
                continue
        self.messages.extend(new)
        return new

    def catch_up(self, timeout_s: float = 30.0) -> list[OonaMessage]:
        """Read at least up to the end the topic had when this view was opened."""
        import time

        deadline = time.monotonic() + timeout_s
        new = []
        while time.monotonic() < deadline:
            new += self.poll(0.2)
            positions = self._consumer.position([TopicPartition(self.spec.name, p) for p in self._ends])
            if all(tp.offset >= self._ends[tp.partition] or self._ends[tp.partition] == 0 for tp in positions):
                break
        return new

    def close(self) -> None:
        self._consumer.close()


def replay_until_committed(settings: KafkaSettings, codec: Codec, spec: TopicSpec, group_id: str) -> list[OonaMessage]:
    """The events a consumer group has already consumed (from the start up to its committed offsets).

    A stateless service calls this at start-up to rebuild the state it had when it last committed.
    """
    consumer = Consumer(settings.client_config() | {"group.id": group_id, "enable.auto.commit": False,
                                                     "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(spec.name, timeout=10).topics[spec.name].partitions
        committed = consumer.committed([TopicPartition(spec.name, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    targets = {tp.partition: tp.offset for tp in committed if tp.offset > 0}
    if not targets:
        return []
    reader = Consumer(settings.client_config() | {"group.id": f"replay-{uuid.uuid4().hex[:8]}",
                                                   "enable.auto.commit": False, "isolation.level": "read_committed"})
    out: list[tuple[int, int, OonaMessage]] = []
    try:
        reader.assign([TopicPartition(spec.name, p, OFFSET_BEGINNING) for p in targets])
        done: set[int] = set()
        while len(done) < len(targets):
            for msg in reader.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                if msg.offset() < targets[msg.partition()] and msg.value() is not None:
                    try:
                        out.append((msg.partition(), msg.offset(), codec.decode(spec, msg.value())))
                    except DecodeError:
                        pass
            for tp in reader.position([TopicPartition(spec.name, p) for p in targets]):
                if tp.offset >= targets[tp.partition]:
                    done.add(tp.partition)
    finally:
        reader.close()
    return [m for _, _, m in sorted(out, key=lambda item: (item[0], item[1]))]
