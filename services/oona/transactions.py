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
any kind, fencing, ``DeliveryError``, ``FatalError``) abort the transaction and rewind to the
committed offsets: those records are read and handled again. A passing one (a coordinator
moving, a call stuck) ends only the batch when the handler's state can be put back as it was at
the last commit (``on_abort``); otherwise, and for the others, the error propagates.

Every transactional call is bounded (its timeout plus ``producer.TXN_CALL_GRACE_S``): librdkafka's
``send_offsets_to_transaction`` can wait forever for a group coordinator after a broker restart
(README "Transactions after a broker restart"). When the abort cannot run (the producer is stuck in
a call, the abort is refused or fails fatally), the producer is replaced by one with the same
transactional id: its initialisation fences the old one, and the coordinator aborts the old
transaction (or first completes a commit it had decided). Only then is the input rewound to the
committed offsets, which are final by then; while the broker cannot initialise the new producer,
the next batch tries again first and reads nothing. Fencing by another instance is not answered so:
the error propagates and the service stops.

Consequences for handlers:
- a handler runs once per record per delivery, but after an aborted transaction (a bus
  error, a crash) the records come again: side effects outside Kafka (a blob written, a
  file, a metric) must be idempotent, and the in-memory state the handler builds must be
  rebuilt by the service (Tamiyo rebuilds from the log, the others from committed offsets);
- what a failing handler changed before it raised stays changed: check, then mutate;
- what a handler produced itself (``consumer.reject``) before it raised stays in the
  transaction.

Batching: a transaction is committed when it has something to publish, never to fill a batch.
A batch that wrote nothing (no output, no dead letter: telemetry folded into state, waiting for
its epoch's end) leaves the transaction open and its offsets unsent; they go with the next
transaction that writes, with the first empty poll (the service is idle: the commit is free), or
after ``max_deferred_s``. Nothing is registered with the broker until the first write, so an open
transaction without writes costs nothing there, and a crash meanwhile only means those records
are read again (they produced nothing). Under load a poll returns what accumulated during the
previous commit, so the batch (and the work one commit carries) grows by itself; when idle a
batch of one commits at once.

``times`` holds where the last batch's time went (``BatchTimes``: consume, handle, produce,
send_offsets, commit) for the benches and the health log.

``after_batch`` (work not tied to one record, e.g. timeouts) is treated the same way: when
it raises the record's-fault kind of exception, the error is logged with its traceback and
counted (``after_batch_failures``), its outputs are dropped and the batch commits without
them; the hook runs again after the next batch. No record can be blamed, so none is
dead-lettered, and stopping would only meet the same failure after the restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from contracts import OonaMessage, TopicName
from services.core.errors import ClientStuckError, FatalError
from services.oona import clients
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

# Offsets of batches that wrote nothing wait at most this long for a transaction to ride with.
MAX_DEFERRED_S = 1.0
# A producer killed mid-transaction blocks read_committed readers of its partitions until the
# coordinator aborts it: at restart (same transactional id) or after this timeout.
TRANSACTION_TIMEOUT_MS = 15_000
# Each transactional call's timeout: under the transaction's own, so that a call that does not honour
# it is given up (OonaProducer's grace) and the producer renewed well within the service loop's watchdog.
TXN_CALL_TIMEOUT_S = 10.0
# Clients given up while blocked in a call live on until it returns (a thread, librdkafka's threads):
# with this many still blocked, the process ends (FatalError) and its supervisor starts it afresh.
MAX_ABANDONED_CLIENTS = 3


@dataclass
class BatchTimes:
    """Where one ``process_batch`` call's wall time went (seconds), and when (``time.time()``)."""

    consume_s: float = 0.0  # waiting for the batch and decoding it
    handle_s: float = 0.0  # the handlers, their outputs encoded
    after_batch_s: float = 0.0  # the after_batch hook, its outputs encoded
    produce_s: float = 0.0  # handing the encoded outputs to the producer
    send_offsets_s: float = 0.0  # send_offsets_to_transaction (0 when deferred)
    commit_s: float = 0.0  # commit_transaction (0 when deferred)
    records: int = 0
    committed: bool = False  # False: the transaction stays open, its offsets deferred
    consumed_at: float = 0.0
    committed_at: float = 0.0


def nothing_to_undo() -> None:
    """``on_abort`` of a handler that keeps no state between records: an aborted batch changed nothing."""


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
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self.producer = OonaProducer(settings, codec, transactional_id=transactional_id,
                                     config={"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS})
        self.producer.init_transactions()
        self.consumer = OonaConsumer(
            settings, codec, group_id=group_id, topics=inputs, dead_letters=self.producer,
            dlq_topic=dlq_topic or TopicName.DLQ.value, config=consumer_config, on_assign=on_assign,
        )
        self.handler = handler
        self.after_batch = after_batch
        # ``on_abort`` puts the handler's state back as it was at the last commit (``nothing_to_undo`` for a
        # handler that keeps none): an aborted batch then loses nothing, so a passing broker error (a coordinator
        # moving, a call stuck) ends the batch, not the process, and the batch is read again. Without it the
        # error propagates: the service cannot undo what the batch folded, and rebuilds from the log instead.
        self.on_abort = on_abort
        self.batches_aborted = 0  # batches aborted on a passing broker error and read again
        self.failed = 0  # records dead-lettered because their handler raised
        self.after_batch_failures = 0
        self.max_deferred_s = MAX_DEFERRED_S
        self.times = BatchTimes()
        self._open = False  # a transaction is begun and not ended
        self._renew = False  # an abort failed: the producer must be replaced before the next transaction
        self.recoveries = 0  # producers replaced after an abort failed (a stuck call, a fatal error)
        # monotonic time of the first record consumed (or dead-lettered) whose offsets are in no
        # transaction yet; None: there is none
        self._unsent_since: float | None = None

    def process_batch(self, max_messages: int = 500, timeout_s: float = 1.0, gather_s: float = 0.0) -> int:
        """Consume and handle one batch; commit it with any deferred before it in one transaction, or,
        when it wrote nothing, leave the transaction open (see the module's docstring). Returns the
        events handled or dead-lettered."""
        times = self.times = BatchTimes()
        if self._renew:  # raises while the broker cannot initialise it yet: nothing is consumed meanwhile
            try:
                self._renew_producer()
            except Exception as exc:
                if not self._rides_out(exc):
                    raise
                log.warning("producer not renewed yet group=%s: %s", self.consumer.group_id, clients.reason(exc))
                return 0
        try:
            if not self._open:
                self.producer.begin_transaction()  # local: nothing reaches the broker before the first write
                self._open = True
            failed_before = self.consumer.dead_lettered + self.consumer.already_dead_lettered
            start = time.perf_counter()
            batch = self.consumer.consume(max_messages, timeout_s, gather_s)
            times.consumed_at, times.records = time.time(), len(batch)
            times.consume_s = time.perf_counter() - start
            if self._unsent_since is None and (
                    batch or self.consumer.dead_lettered + self.consumer.already_dead_lettered != failed_before):
                self._unsent_since = time.monotonic()
            for delivered in batch:
                self._produce(self._outputs(delivered), times)
            middle = time.perf_counter()
            times.handle_s = middle - start - times.consume_s - times.produce_s
            outputs = self._after_batch(batch)
            times.after_batch_s = time.perf_counter() - middle
            self._produce(outputs, times)
            if not self.producer.transaction_writes and (self._unsent_since is None or (
                    batch and time.monotonic() - self._unsent_since < self.max_deferred_s)):
                return len(batch)  # nothing to publish: the offsets wait for the next write or an idle poll
            self._commit(times)
        except BaseException as exc:
            self._abort(exc)
            if not self._rides_out(exc):
                raise
            self.batches_aborted += 1
            log.warning("batch aborted on a broker error group=%s (%s); its records come again",
                        self.consumer.group_id, clients.reason(exc))
            return 0
        return len(batch)

    def _rides_out(self, exc: BaseException) -> bool:
        """A batch whose handler's state ``on_abort`` put back, ended by a passing broker error (not a
        fencing: another instance owns the transactional id, and this one must stop)."""
        return (self.on_abort is not None and isinstance(exc, Exception) and not clients.is_fenced(exc)
                and (clients.is_transient(exc) or isinstance(exc, ClientStuckError)))

    def _commit(self, times: BatchTimes, timeout_s: float | None = None) -> None:
        timeout_s = TXN_CALL_TIMEOUT_S if timeout_s is None else timeout_s
        start = time.perf_counter()
        unsent = self._unsent_since is not None
        positions = [tp for tp in self.consumer.positions() if tp.offset >= 0] if unsent else []
        if positions:  # nothing consumed: the committed offsets stand, no round trip
            self.producer.send_offsets_to_transaction(positions, self.consumer.group_metadata(), timeout_s)
        middle = time.perf_counter()
        self.producer.commit_transaction(timeout_s)
        end = time.perf_counter()
        self._open, self._unsent_since = False, None
        times.send_offsets_s, times.commit_s = middle - start, end - middle
        times.committed, times.committed_at = True, time.time()

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

    def _abort(self, cause: BaseException) -> None:
        """End the failed transaction and go back to the committed offsets: abort it, or, when the abort
        fails (the producer is stuck in a call, or failed fatally), replace the producer with one of
        the same transactional id, which fences the old one and so aborts its transaction."""
        log.error("transaction aborted group=%s", self.consumer.group_id, exc_info=cause)
        self._open, self._unsent_since = False, None
        if self.on_abort is not None:  # nothing handled in the aborted transaction stands
            self.on_abort()
        if clients.is_fenced(cause):
            return  # another instance has our transactional id: it goes on, we stop (the error propagates)
        try:
            self.producer.abort_transaction(TXN_CALL_TIMEOUT_S)
        except Exception as exc:
            if clients.is_fenced(exc):
                return
            log.warning("abort failed group=%s (%s); replacing the producer", self.consumer.group_id,
                        clients.reason(exc))
            self._renew = True
            self.recoveries += 1
            try:
                self._renew_producer()
            except FatalError:
                raise
            except Exception as renew_exc:  # the broker is not back yet: the next batch tries again first
                log.warning("producer not renewed yet group=%s: %s", self.consumer.group_id,
                            clients.reason(renew_exc))
        # After the renewal: the new producer's initialisation waited for the old transaction to end, so
        # the committed offsets read then are final (until it is renewed, the rewind waits too).
        self.consumer.rewind_to_committed(defer=self._renew)

    def _renew_producer(self) -> None:
        if self.producer.blocked_clients >= MAX_ABANDONED_CLIENTS:
            raise FatalError(f"producer {self.producer.transactional_id}: {MAX_ABANDONED_CLIENTS} clients stuck in "
                             "a call; restarting the process frees them")
        try:
            self.producer.renew(TXN_CALL_TIMEOUT_S)
        except Exception as exc:
            if clients.is_fatal(exc) or clients.is_fenced(exc):  # e.g. not authorised: a new one cannot help
                raise FatalError(f"producer {self.producer.transactional_id} cannot be renewed: "
                                 f"{clients.reason(exc)}") from None
            raise
        self._renew = False

    def _produce(self, outputs: list[Encoded], times: BatchTimes) -> None:
        start = time.perf_counter()
        for topic, value, key in outputs:
            self.producer.produce_raw(topic, value, key)
        times.produce_s += time.perf_counter() - start

    def close(self) -> None:
        if self._open and self._unsent_since is not None and not self._renew and not self.producer.stuck:
            # Deferred offsets: what was read and wrote nothing need not be read again after a restart.
            # Briefly: a transaction without writes leaves nothing on the broker, so failing is harmless.
            try:
                self._commit(BatchTimes(), timeout_s=5.0)
            except Exception as exc:
                log.warning("deferred offsets not committed at close group=%s: %s", self.consumer.group_id, exc)
        self.consumer.close()
        self.producer.close()
