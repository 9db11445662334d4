"""Exactly-once consume-transform-produce (the loop of Karn, Tamiyo, Tezzeret and Urabrask).

Each batch runs in one Kafka transaction: the outputs, any dead letters, and the
consumed offsets (``send_offsets_to_transaction``) commit together or not at all.
After a crash the group resumes from the last committed offsets, and consumers
reading with ``isolation.level=read_committed`` never see an aborted output.

Per-record failure isolation (Kafka Streams' processing-exception handler): a record's
outputs are collected and encoded before any of them is produced, so when its handler
raises the record's fault (``services.oona.isolation``), nothing of it has reached the
transaction. The record is then dead-lettered in the same transaction (reason: exception
type and message) and the batch goes on; the records before and after it commit with the
offsets past it, atomically. The handler is not run again and the service's in-memory
state stays that of the records that committed. Errors of the bus (Kafka exceptions of
any kind, fencing, ``DeliveryError``, ``FatalError``) abort the transaction, rewind to the
committed offsets and propagate, as before: those records are read and handled again.

Consequences for handlers:
- a handler runs once per record per delivery, but after an aborted transaction (a bus
  error, a crash) the records come again: side effects outside Kafka (a blob written, a
  file, a metric) must be idempotent, and the in-memory state the handler builds must be
  rebuilt by the service (Tamiyo rebuilds from the log, the others from committed offsets);
- what a failing handler changed before it raised stays changed: check, then mutate;
- what a handler produced itself (``consumer.reject``) before it raised stays in the
  transaction.

``after_batch`` (work not tied to one record, e.g. timeouts) is treated the same way: when
it raises the record's-fault kind of exception, the error is logged with its traceback and
counted (``after_batch_failures``), its outputs are dropped and the batch commits without
them; the hook runs again after the next batch. No record can be blamed, so none is
dead-lettered, and stopping would only meet the same failure after the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import TopicPartition

from contracts import OonaMessage, TopicName
from services.oona.codec import Codec
from services.oona.consumer import Delivered, OonaConsumer
from services.oona.isolation import is_record_failure
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

Output = tuple[TopicSpec, OonaMessage[Any]]
Handler = Callable[[Delivered], Iterable[Output]]
Encoded = tuple[str, bytes, bytes]  # topic, value, key


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
        consumer_config: dict[str, Any] | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        after_batch: Callable[[list[Delivered]], Iterable[Output]] | None = None,
    ) -> None:
        # A producer killed mid-transaction blocks read_committed readers of its partitions until the
        # coordinator aborts it: at restart (same transactional id) or after this timeout.
        self.producer = OonaProducer(settings, codec, transactional_id=transactional_id,
                                     config={"transaction.timeout.ms": 15000})
        self.producer.init_transactions()
        self.consumer = OonaConsumer(
            settings, codec, group_id=group_id, topics=inputs, dead_letters=self.producer,
            dlq_topic=dlq_topic or TopicName.DLQ.value, config=consumer_config, on_assign=on_assign,
        )
        self.handler = handler
        self.after_batch = after_batch
        self.failed = 0  # records dead-lettered because their handler raised
        self.after_batch_failures = 0

    def process_batch(self, max_messages: int = 500, timeout_s: float = 1.0, gather_s: float = 0.0) -> int:
        """Consume, handle and commit one batch atomically; returns the events handled or dead-lettered."""
        self.producer.begin_transaction()
        try:
            failed_before = self.consumer.dead_lettered + self.consumer.already_dead_lettered
            batch = self.consumer.consume(max_messages, timeout_s, gather_s)
            consumed = bool(batch) or self.consumer.dead_lettered + self.consumer.already_dead_lettered != failed_before
            for delivered in batch:
                self._produce(self._outputs(delivered))
            self._produce(self._after_batch(batch))
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

    def _outputs(self, delivered: Delivered) -> list[Encoded]:
        """The record's outputs, all encoded (an output that cannot be encoded is the record's failure
        too); none of them when it failed, and then the record is dead-lettered instead."""
        try:
            return [self.producer.encode(spec, message) for spec, message in self.handler(delivered)]
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            self.failed += 1
            self.consumer.dead_letter_failure(delivered, exc)
            return []

    def _after_batch(self, batch: list[Delivered]) -> list[Encoded]:
        if self.after_batch is None:
            return []
        try:
            return [self.producer.encode(spec, message) for spec, message in self.after_batch(batch)]
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            self.after_batch_failures += 1
            log.error("after_batch failed group=%s; the batch commits without its outputs", self.consumer.group_id,
                      exc_info=exc)
            return []

    def _produce(self, outputs: list[Encoded]) -> None:
        for topic, value, key in outputs:
            self.producer.produce_raw(topic, value, key)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
