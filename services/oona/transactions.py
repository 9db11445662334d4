"""Exactly-once consume-transform-produce (the loop of Tamiyo, Tezzeret and Urabrask).

Each batch runs in one Kafka transaction: the outputs, any dead letters, and the
consumed offsets (``send_offsets_to_transaction``) commit together or not at all.
After a crash the group resumes from the last committed offsets, and consumers
reading with ``isolation.level=read_committed`` never see an aborted output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import TopicPartition

from contracts import OonaMessage
from services.oona.codec import Codec
from services.oona.consumer import Delivered, OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

Output = tuple[TopicSpec, OonaMessage]
Handler = Callable[[Delivered], Iterable[Output]]


class ExactlyOnceProcessor:
    def __init__(
        self,
        settings: KafkaSettings,
        codec: Codec,
        *,
        group_id: str,
        transactional_id: str,
        inputs: Sequence[TopicSpec],
        handler: Handler,
        dlq_topic: str | None = None,
        consumer_config: dict | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        after_batch: Callable[[list[Delivered]], Iterable[Output]] | None = None,
    ) -> None:
        # A producer killed mid-transaction blocks read_committed readers of its partitions until the
        # coordinator aborts it: at restart (same transactional id) or after this timeout.
        self.producer = OonaProducer(settings, codec, transactional_id=transactional_id,
                                     config={"transaction.timeout.ms": 15000})
        self.producer.init_transactions()
        extra = {"dlq_topic": dlq_topic} if dlq_topic else {}
        self.consumer = OonaConsumer(
            settings, codec, group_id=group_id, topics=inputs, dead_letters=self.producer,
            config=consumer_config, on_assign=on_assign, **extra,
        )
        self.handler = handler
        self.after_batch = after_batch

    def process_batch(self, max_messages: int = 500, timeout: float = 1.0, gather_s: float = 0.0) -> int:
        """Consume, handle and commit one batch atomically; returns the events handled."""
        self.producer.begin_transaction()
        try:
            dead_before = self.consumer.dead_lettered
            batch = self.consumer.consume(max_messages, timeout, gather_s)
            consumed = bool(batch) or self.consumer.dead_lettered != dead_before
            for delivered in batch:
                for spec, message in self.handler(delivered):
                    self.producer.publish(spec, message)
            for spec, message in self.after_batch(batch) if self.after_batch else ():
                self.producer.publish(spec, message)
            positions = [tp for tp in self.consumer.positions() if tp.offset >= 0] if consumed else []
            if positions:  # nothing consumed: the committed offsets stand, no round trip
                self.producer.send_offsets_to_transaction(positions, self.consumer.group_metadata())
            self.producer.commit_transaction()
        except BaseException:
            log.exception("transaction aborted group=%s", self.consumer.group_id)
            self.producer.abort_transaction()
            self.consumer.rewind_to_committed()
            raise
        return len(batch)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
