"""The idempotent, batching producer every Esper service publishes through.

Before the first event of a record type it encodes, the producer publishes the writer
schema on the schema log and waits for the broker's ack (``schema_log.py``), so that any
consumer, even one version behind, can resolve the schema of every event it reads. Codecs
that name their schemas otherwise (the Confluent registry's ids) publish nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from contracts import OonaMessage
from services.core.errors import DeliveryError, EncodeError
from services.oona import clients
from services.oona.codec import Codec
from services.oona.dlq_records import Header
from services.oona.schema_log import SchemaLogWriter
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec

log = logging.getLogger(__name__)
_RUN_ID = attrgetter("run_id")

# How long a transactional call may run past its own timeout before the client is given up
# (clients.BoundedCalls). librdkafka overruns a timeout it honours by up to ~7 s while the broker is
# down (the request's own timer; measured by tests/e2e/txn_restart_soak.py): the grace covers that.
TXN_CALL_GRACE_S = 10.0

# Large enough for the DLQ (8 MiB topics), which must take any message whole.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024

PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "batch.size": 1024 * 1024,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1024 * 1024,
    "message.max.bytes": MAX_MESSAGE_BYTES,
    # Java clients place keys with murmur2; agree with them.
    "partitioner": "murmur2_random",
    # Successful deliveries need no Python callback; failures still reach _on_delivery.
    "delivery.report.only.error": True,
}


def message_key(spec: TopicSpec, message: OonaMessage[Any]) -> bytes:
    return message_key_texts(spec, [message])[0].encode("utf-8")


def message_keys(spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[bytes]:
    """The key of each message (its run id, or the payload field ``spec.key`` names); EncodeError if one has none."""
    return [key.encode("utf-8") for key in message_key_texts(spec, messages)]


def message_key_texts(spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[str]:
    """The keys as text: ``produce`` writes a str key as its UTF-8 bytes itself, in C."""
    if spec.key == "run_id":
        values = list(map(_RUN_ID, messages))
    else:
        values = [getattr(message.payload, spec.key, None) for message in messages]
    if not all(values):
        raise EncodeError(spec.name, f"{spec.key} is required as the key of {spec.name}")
    return values


class OonaProducer:
    """Encodes contracts and produces them; delivery failures surface on ``flush``."""

    def __init__(
        self,
        settings: KafkaSettings,
        codec: Codec,
        *,
        transactional_id: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        transactional = {"transactional.id": transactional_id} if transactional_id else {}
        # The delivery callback of every message, set once: produce() then parses no callback argument.
        self._layers = (PRODUCER_DEFAULTS, config or {}, transactional, {"on_delivery": self._on_delivery})
        self._producer = clients.producer(settings, *self._layers)
        self.transactional_id = transactional_id
        # The transactional calls, each bounded (see clients.BoundedCalls); a new one with each client.
        self._calls = clients.BoundedCalls(f"producer {transactional_id}", TXN_CALL_GRACE_S)
        self.renewals = 0  # clients replaced (renew) after a call got stuck or failed fatally
        self._abandoned: list[clients.BoundedCalls] = []  # the calls of clients replaced while stuck in one
        self._initialising = False  # a renewed client's init_transactions has not succeeded yet
        self.codec = codec
        self.settings = settings
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._announced: set[str] = set()  # record names whose writer schema is on the schema log
        self._schema_log: SchemaLogWriter | None = None
        self.transaction_writes = 0  # messages and offsets sent in the current transaction

    # -- callbacks -------------------------------------------------------------------------
    def _on_delivery(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            with self._lock:
                self._failures.append(f"{msg.topic()}: {error.str()}")

    # -- the schema log ---------------------------------------------------------------------
    def announce(self, spec: TopicSpec) -> None:
        """Publish the writer schema of ``spec``'s record on the schema log, once, before its first event."""
        if spec.record_name in self._announced:
            return
        writer_schema = getattr(self.codec, "writer_schema", None)  # SingleObjectCodec's; the registry has its own
        if writer_schema is not None and not spec.raw:
            if self._schema_log is None:
                self._schema_log = SchemaLogWriter(self.settings)
            self._schema_log.publish(spec.record_name, *writer_schema(spec.record_name))
        self._announced.add(spec.record_name)

    # -- producing -------------------------------------------------------------------------
    def publish(self, spec: TopicSpec | str, message: OonaMessage[Any],
                headers: dict[str, bytes] | None = None) -> None:
        self.produce_raw(*self.encode(spec, message), headers)

    def encode(self, spec: TopicSpec | str, message: OonaMessage[Any]) -> tuple[str, bytes, bytes]:
        """(topic, value, key) of ``message``, produced by nothing yet: ``produce_raw(*encoded)`` sends it."""
        spec = topic_spec(spec) if isinstance(spec, str) else spec
        self.announce(spec)
        return spec.name, self.codec.encode(spec, message), message_key(spec, message)

    def publish_many(self, spec: TopicSpec | str, messages: Sequence[OonaMessage[Any]]) -> int:
        """Encode a batch (one call into the codec), then enqueue it, one ``produce`` per message (no headers).

        A ``produce`` loop with the delivery callback set once in the config is the cheapest way
        into librdkafka from Python here: ``produce_batch`` measured no faster per message (a dict
        per message to build and parse) and librdkafka's batch call takes no headers. Nothing is
        enqueued when any message cannot be encoded (EncodeError).
        """
        spec = topic_spec(spec) if isinstance(spec, str) else spec
        self.announce(spec)
        values = self.codec.encode_many(spec, messages)
        keys = message_key_texts(spec, messages)
        topic, produce = spec.name, self._producer.produce
        with clients.map_exceptions(lambda reason: DeliveryError(topic, reason)):
            for value, key in zip(values, keys, strict=True):
                try:
                    produce(topic, value, key)
                except BufferError:  # local queue full: let librdkafka drain it
                    self._produce_when_queued(topic, value, key.encode("utf-8"), None)
        self.transaction_writes += len(values)
        self._producer.poll(0)
        return len(values)

    def produce_raw(
        self, topic: str, value: bytes | None, key: bytes | None = None,
        headers: dict[str, bytes] | list[Header] | None = None,
    ) -> None:
        with clients.map_exceptions(lambda reason: DeliveryError(topic, reason)):
            self._produce_when_queued(topic, value, key, headers)
        self.transaction_writes += 1
        self._producer.poll(0)

    def _produce_when_queued(self, topic: str, value: bytes | None, key: bytes | None,
                             headers: dict[str, bytes] | list[Header] | None) -> None:
        while True:
            try:
                # The stub's dict and list take str | bytes | None values; being invariant, they
                # refuse ours (bytes | None), which librdkafka takes.
                self._producer.produce(topic, value=value, key=key, headers=headers)  # type: ignore[arg-type]
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self._producer.poll(0.05)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued message; raise DeliveryError if any was refused."""
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError(failures[0].split(":", 1)[0], f"{len(failures)} failed, first: {failures[0]}")
        if remaining:
            raise DeliveryError("*", f"{remaining} messages still queued after {timeout_s:g}s")

    def pending(self) -> int:
        return len(self._producer)

    # -- transactions ------------------------------------------------------------------------
    # Each call runs on the producer's call thread and raises ClientStuckError when it is still
    # running TXN_CALL_GRACE_S after its timeout (librdkafka issue #5456: send_offsets_to_transaction
    # can wait forever for the group coordinator after a broker restart).
    def init_transactions(self, timeout_s: float = 30.0) -> None:
        producer = self._producer
        self._calls.call("init_transactions", lambda: producer.init_transactions(timeout_s), timeout_s)

    def begin_transaction(self) -> None:
        self._calls.call("begin_transaction", self._producer.begin_transaction, 0.0)
        self.transaction_writes = 0

    def send_offsets_to_transaction(self, offsets: Iterable[TopicPartition], group_metadata: object,
                                    timeout_s: float = 30.0) -> None:
        producer, offsets = self._producer, list(offsets)
        self._calls.call("send_offsets_to_transaction",
                         lambda: producer.send_offsets_to_transaction(offsets, group_metadata, timeout_s), timeout_s)
        self.transaction_writes += 1

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        producer = self._producer
        self._calls.call("commit_transaction", lambda: producer.commit_transaction(timeout_s), timeout_s)

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        producer = self._producer
        self._calls.call("abort_transaction", lambda: producer.abort_transaction(timeout_s), timeout_s)

    @property
    def blocked_clients(self) -> int:
        """Clients given up and still blocked in their call (each holds a thread and librdkafka's threads)."""
        return self.stuck + sum(calls.blocked for calls in self._abandoned)

    @property
    def stuck(self) -> bool:
        """A transactional call outlived its deadline: only ``renew`` makes this producer usable again."""
        return self._calls.stuck is not None

    def renew(self, timeout_s: float = 30.0) -> None:
        """Replace the client by a new one with the same ``transactional.id`` and initialise it.

        Its InitProducerId fences the old client: the coordinator aborts the old one's open
        transaction (or first completes a commit already decided), so nothing the old client still
        holds (a stuck call, queued messages) can commit. The old client is dropped on a daemon
        thread, where closing it cannot block the caller. Raises like ``init_transactions``; then
        call it again: a new client whose initialisation timed out (the broker still loading) is
        initialised again, not replaced, since its InitProducerId may still complete and would fence
        a newer one.
        """
        if not self._initialising or self.stuck:
            if self.stuck:
                self._abandoned.append(self._calls)
            self._calls.close()
            old, self._producer = self._producer, clients.producer(self.settings, *self._layers)
            self._calls = clients.BoundedCalls(f"producer {self.transactional_id}", TXN_CALL_GRACE_S)
            with self._lock:
                self._failures = []  # the old client's: its transaction is aborted with it
            self.transaction_writes = 0
            self.renewals += 1
            self._initialising = True
            threading.Thread(target=_release, args=([old],), name="producer-release", daemon=True).start()
            del old
            log.warning("producer transactional.id=%s replaced (renewal %d)", self.transactional_id, self.renewals)
        self.init_transactions(timeout_s)
        self._initialising = False

    def close(self, timeout_s: float = 30.0) -> None:
        if not self.stuck:  # a stuck client's messages belong to a transaction that cannot commit
            self._producer.flush(timeout_s)
        if self._schema_log is not None:
            self._schema_log.close()


def _release(holder: list[Any]) -> None:
    """Drop the last reference to a client given up (its destruction may wait on its brokers)."""
    holder.clear()
