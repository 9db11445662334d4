"""The schema log on Kafka: writer schemas published before their first use, read back on a miss.

In the default, registry-free mode a consumer knows the writer schemas committed with its own
code (``schemas/`` and ``schemas/history/``). A producer one version ahead writes with a
schema the consumer has never seen, so before its first event with a schema each producer
publishes it on ``_esper_schemas`` (compacted, key = fingerprint hex; records:
``published_schemas.py``) and waits until the broker has it. A consumer that meets an unknown
fingerprint reads what is new on that topic (``SchemaLogReader.refresh``), learns every
acceptable schema (``schema_store.learn_published``) and decodes with Avro resolution to its
own reader schema; the store decides whether it may (same record, readable by the reader).

The topic is created like every registered topic (``esper topics create``); a producer that
finds it missing creates it, as Confluent's registry creates its ``_schemas`` (on a cluster
that auto-creates topics, create it first: an auto-created topic is not compacted). Reading it is
bounded: only what came since the last read, a fingerprint still unknown after a read is not
looked for again for ``MISS_RETRY_S``, and a log that cannot be read within the timeout is a
broker problem (``BrokerUnavailableError``, fatal: nothing is dead-lettered for it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from contracts import TopicName
from services.core.errors import BrokerUnavailableError, DeliveryError, SchemaError
from services.oona import clients
from services.oona.admin import ensure_topics
from services.oona.log_reader import ReadToEnds
from services.oona.messages import position_of
from services.oona.published_schemas import publication, read_publication
from services.oona.schema_store import learn_published, published_writer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec

log = logging.getLogger(__name__)

MISS_RETRY_S = 5.0
_MAX_MISSES = 1024

_MISSING_TOPIC = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}
_READERS: dict[tuple[str, str], SchemaLogReader] = {}
_READERS_LOCK = threading.Lock()


def schema_log_spec(settings: KafkaSettings) -> TopicSpec:
    return topic_spec(TopicName.SCHEMAS.value, settings.topic_prefix)


class SchemaLogWriter:
    """Publishes writer schemas for one producer: each once, synchronously, before it is used."""

    def __init__(self, settings: KafkaSettings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.spec = schema_log_spec(settings)
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        self._published: set[bytes] = set()
        self._lock = threading.Lock()

    def publish(self, record_name: str, version: int, schema: dict[str, Any]) -> None:
        """Put ``schema`` on the schema log and wait for the broker's ack (a no-op once done)."""
        key, value = publication(record_name, version, schema)
        with self._lock:
            if key in self._published:
                return
            failure = self._produce(key, value)
            if failure is not None and failure.code() in _MISSING_TOPIC:
                # Not created yet (`esper topics create` makes it): create it compacted, as Confluent's
                # registry creates its _schemas, and try again with a client that has not cached its absence.
                ensure_topics(self.settings, [self.spec], timeout_s=self.timeout_s)
                deadline = time.monotonic() + self.timeout_s
                while failure is not None and failure.code() in _MISSING_TOPIC and time.monotonic() < deadline:
                    self.close()
                    failure = self._produce(key, value)
            if failure is not None:
                raise DeliveryError(self.spec.name, f"schema {record_name} v{version}: {failure.str()}")
            self._published.add(key)
        log.info("schema published record=%s version=%d fingerprint=%s topic=%s", record_name, version,
                 key.decode(), self.spec.name)

    def _produce(self, key: bytes, value: bytes) -> KafkaError | None:
        """Produce one record and wait for it: None once acknowledged, else the error."""
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _msg: object) -> None:
            if error is not None:
                failures.append(error)

        producer = self._client()
        refused: list[KafkaError] = []
        with clients.suppress(clients.any_error, on_suppressed=refused.append):  # the caller decides what to do
            producer.produce(self.spec.name, key=key, value=value, on_delivery=delivered)
        if refused:
            return refused[0]
        if producer.flush(self.timeout_s):
            return KafkaError(KafkaError._TIMED_OUT, f"not acknowledged within {self.timeout_s:g}s")
        return failures[0] if failures else None

    def _client(self) -> Producer:
        if self._producer is None:
            # Not the services' PRODUCER_DEFAULTS: one record at a time, acknowledged before it is used.
            self._producer = clients.producer(self.settings, {
                "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                # A missing topic fails fast (then it is created), not after librdkafka's 30 s default.
                "topic.metadata.propagation.max.ms": 2000,
            })
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None


class SchemaLogReader:
    """Reads the schema log incrementally and teaches the process every acceptable schema on it."""

    def __init__(self, settings: KafkaSettings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.topic = schema_log_spec(settings).name
        self.timeout_s = timeout_s
        self._consumer: Consumer | None = None
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._misses: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self.rejected = 0  # records on the log that are not acceptable schemas

    def refresh(self, fingerprint: bytes) -> bool:
        """Read what is new on the log; True when ``fingerprint``'s schema is known (now or before)."""
        with self._lock:
            if published_writer(fingerprint) is not None:
                return True
            missed = self._misses.get(fingerprint)
            if missed is not None and time.monotonic() - missed < MISS_RETRY_S:
                return False
            self._read_new()
            if published_writer(fingerprint) is not None:
                return True
            if len(self._misses) >= _MAX_MISSES:
                self._misses.clear()
            self._misses[fingerprint] = time.monotonic()
            return False

    def _client(self) -> Consumer:
        if self._consumer is None:
            # Assigned at explicit offsets, never committed: the group is a throwaway.
            self._consumer = clients.consumer(self.settings, {
                "group.id": f"esper-schema-log-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": False,
            })
        return self._consumer

    def _read_new(self) -> None:
        consumer = self._client()
        deadline = time.monotonic() + self.timeout_s
        with clients.map_exceptions(lambda reason: BrokerUnavailableError(
                self.settings.bootstrap_servers, f"schema log {self.topic}: {reason}")):
            topics = consumer.list_topics(self.topic, timeout=self.timeout_s).topics
            meta = topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return  # no schema log (yet): nothing published, nothing to learn
            # The high watermark: the schema log is written without transactions, so it is the last stable offset.
            ends, starts = {}, {}
            for partition in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                           timeout=self.timeout_s, cached=False)
                start = max(self._next.get(partition, low), low)
                if start < high:
                    ends[(self.topic, partition)] = high
                    starts[(self.topic, partition)] = start
            if not starts:
                return
            consumer.assign([TopicPartition(t, p, start) for (t, p), start in starts.items()])
            progress = ReadToEnds(ends, starts)
            while not progress.done:
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(self.settings.bootstrap_servers,
                                                 f"schema log {self.topic} not read within {self.timeout_s:g}s")
                for msg in consumer.consume(500, 0.2):
                    error = msg.error()
                    if error is not None:
                        if error.fatal():
                            raise BrokerUnavailableError(self.settings.bootstrap_servers, error.str())
                        continue
                    self._learn(msg)
                    _, partition, offset = position_of(msg)
                    self._next[partition] = offset + 1
                progress.advance(consumer)
            for (_, partition), reached in progress.reached.items():
                self._next[partition] = max(self._next.get(partition, 0), reached)
            consumer.unassign()

    def _learn(self, msg: Message) -> None:
        key = msg.key()
        try:
            writer = read_publication(key, msg.value())
        except SchemaError as exc:
            self.rejected += 1
            log.warning("schema-log record rejected topic=%s[%d] offset=%d reason=%s", msg.topic(),
                        msg.partition(), msg.offset(), exc)
            return
        if learn_published(writer) and key is not None:  # never None: read_publication refuses that
            log.info("schema learned record=%s version=%d fingerprint=%s", writer.record_name, writer.version,
                     key.decode())

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def schema_log_reader(settings: KafkaSettings) -> SchemaLogReader:
    """The process's reader of the schema log of ``settings``' cluster and prefix (one per pair)."""
    key = (settings.bootstrap_servers, settings.topic_prefix)
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            reader = _READERS[key] = SchemaLogReader(settings)
        return reader
