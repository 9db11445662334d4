"""Consumer with manual commits, batch ``consume(n)`` and dead-lettering.

A message that cannot be decoded or validated is produced, unchanged, to
``esper.dlq`` with its original headers and, beside them, its source and the reason
(``esper.dlq.*`` headers: Kafka Connect's convention), and the consumer carries on. So
is a decoded event whose handling fails (``handle_isolated``; the rules of what counts
as the record's fault are in ``services.oona.isolation``).
``commit()`` first makes sure every dead letter is durably on the DLQ, so
committing can never skip past a message that is neither processed nor
dead-lettered.

A record is dead-lettered once per group, however often it is read: a consumer that
rebuilds by reading its inputs again (Tamiyo) meets its poison records again, and so does a
restarted one. A record is dead-lettered only if the DLQ holds no dead letter of this group
for its source offset (``already_dead_lettered`` counts the others). The DLQ is read for
that once per assignment, when a record first fails (nothing is read while nothing fails),
keeping this group's source offsets only; the dead letters produced since are added. Exact,
not a bound on offsets: a record held past its commit and dead-lettered later (Tamiyo's
events of an unknown run) is dead-lettered after a restart if it was not before, and the
committed offsets (which a rebuild moves back) play no part.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from contracts import OonaMessage, TopicName
from contracts.dead_letter import (
    DLQ_HEADER_ERROR_TYPE,
    DLQ_HEADER_FAILED_AT,
    DLQ_HEADER_GROUP,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TOPIC,
    DeadLetter,
)
from services.core.errors import (
    DecodeError,
    EsperError,
    FatalError,
    OversizedMessageError,
)
from services.oona import clients
from services.oona.admin import OffsetReader
from services.oona.codec import Codec
from services.oona.dlq_records import Header, dead_letter_headers
from services.oona.isolation import failure_reason, is_record_failure
from services.oona.log_reader import ReadToEnds, scan_range
from services.oona.messages import headers_of, position_of
from services.oona.producer import OonaProducer
from services.oona.schema_log import schema_log_reader
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUMER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
    "enable.partition.eof": False,
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
}


_REJOINING = {KafkaError._ASSIGNMENT_LOST, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
              KafkaError.UNKNOWN_MEMBER_ID}


# An aborted transaction's rewind failing this long (the broker answers nothing about the group) ends
# the process: its supervisor starts it with new clients.
REWIND_GIVE_UP_S = 120.0
# A consumer without partitions past ``KafkaSettings.rejoin_after_s`` asks the broker about its membership at most
# this often; the old client of a re-created consumer is given this long to leave the group.
MEMBERSHIP_CHECK_S = 10.0
CLOSE_WAIT_S = 10.0
# A synchronous commit waits without limit for a group coordinator: it is waited for beside it, its wait
# logged every COMMIT_WAIT_LOG_S, and given up COMMIT_GRACE_S past its timeout.
COMMIT_WAIT_LOG_S = 5.0
COMMIT_GRACE_S = 10.0


class Delivered(NamedTuple):
    """A decoded event and where it was read from (a named tuple: one is built per consumed event,
    at a quarter of a frozen dataclass's cost)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    message: OonaMessage[Any]
    value: bytes = b""  # the original bytes, so a semantically rejected event can be dead-lettered whole
    headers: tuple[Header, ...] = ()  # the original headers, kept by its dead letter


class OonaConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        codec: Codec,
        *,
        group_id: str,
        topics: Sequence[TopicSpec],
        dead_letters: OonaProducer,
        dlq_topic: str = TopicName.DLQ.value,
        config: dict[str, Any] | None = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        self._config = config or {}
        self._consumer = clients.consumer(settings, CONSUMER_DEFAULTS, {"group.id": group_id}, self._config)
        self.codec = codec
        use_schema_log = getattr(codec, "use_schema_log", None)
        if use_schema_log is not None:  # unknown writer schemas: those a newer producer put on the schema log
            use_schema_log(schema_log_reader(settings))
        self.group_id = group_id
        self.max_event_bytes = settings.max_event_bytes
        self.dead_letters = dead_letters
        self.dlq_topic = dlq_topic
        self.on_dead_letter = on_dead_letter
        self.dead_lettered = 0
        self.already_dead_lettered = 0  # records met again whose dead letter is on the DLQ: not dead-lettered again
        # This group's dead letters on the DLQ, by source partition: read when a record first fails; with
        # those produced since (dropped on an abort: they may not have committed).
        self._on_dlq: dict[tuple[str, int], set[int]] | None = None
        self._produced: dict[tuple[str, int], set[int]] = {}
        self._early: list[Delivered] = []
        self._commits = clients.BoundedCalls(f"consumer {group_id}", grace_s=COMMIT_GRACE_S)
        self._rewind_pending = False  # an aborted transaction's rewind is still to be done (rewind_to_committed)
        self._rewind_failing_since: float | None = None
        self._settings = settings
        self._offsets = OffsetReader(settings)
        self._specs = {spec.name: spec for spec in topics}
        self._on_assign = on_assign
        self.rejoin_after_s = settings.rejoin_after_s
        self.recreated = 0  # clients replaced because the group had dropped this member for good
        self._unassigned_since: float | None = time.monotonic()  # monotonic time since when it has no partitions
        self._next_membership_check = 0.0
        self._subscribe()

    def _subscribe(self) -> None:
        # Another member may dead-letter while a partition is not ours: read the DLQ again when needed.
        def revoked(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self._on_dlq = None

        on_assign = self._on_assign
        if on_assign is None:
            self._consumer.subscribe(list(self._specs), on_revoke=revoked, on_lost=revoked)
        else:
            # The callback may set each partition's starting offset (e.g. OFFSET_BEGINNING to rebuild).
            def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
                on_assign(partitions)
                consumer.assign(partitions)

            self._consumer.subscribe(list(self._specs), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def _rejoin_if_dropped(self) -> None:
        """Re-create the client when it has had no partitions for ``rejoin_after_s`` and the group coordinator
        does not count it as a member.

        librdkafka rejoins by itself after a session timeout, max.poll.interval.ms or a lost assignment, on
        the next poll. Once, after a load spike (load 75-210), it did not: the broker removed the member on
        heartbeat expiration, the group stayed empty, and the client sent no JoinGroup for 6 minutes while it
        was polled every 0.2 s. A member without partitions because the group has more members than partitions
        is left alone (the coordinator counts it), and so is one the coordinator cannot be asked about.
        """
        if self._consumer.assignment():
            self._unassigned_since = None
            return
        now = time.monotonic()
        if self._unassigned_since is None:
            self._unassigned_since = now
        if now - self._unassigned_since < self.rejoin_after_s or now < self._next_membership_check:
            return
        self._next_membership_check = now + MEMBERSHIP_CHECK_S
        member = self._consumer.memberid()
        try:  # asked even without a member id: a broker that does not answer would not take a new client either
            members = self._offsets.group_members(self.group_id, timeout_s=MEMBERSHIP_CHECK_S)
        except Exception as exc:
            log.warning("consumer group=%s has had no partitions for %.0fs; its membership is not known (%s)",
                        self.group_id, now - self._unassigned_since, clients.reason(exc))
            return
        if member and member in members:
            return
        log.warning("consumer group=%s has had no partitions for %.0fs and is no member of its group (member=%s, "
                    "members=%d); re-creating the consumer to rejoin", self.group_id, now - self._unassigned_since,
                    member or "-", len(members))
        self._recreate()

    def _recreate(self) -> None:
        old, self._consumer = self._consumer, clients.consumer(self._settings, CONSUMER_DEFAULTS,
                                                               {"group.id": self.group_id}, self._config)
        # The old client leaves the group (a stuck one is left to its thread: a daemon, it does not hold the exit).
        closing = threading.Thread(target=old.close, name=f"close-{self.group_id}", daemon=True)
        closing.start()
        closing.join(CLOSE_WAIT_S)
        self._on_dlq, self._early, self._rewind_pending = None, [], False
        self._unassigned_since = time.monotonic()
        self.recreated += 1
        self._subscribe()

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0, gather_s: float = 0.0) -> list[Delivered]:
        """Up to ``max_messages`` decoded events; undecodable ones go to the DLQ instead.

        Returns as soon as something arrived (within ``timeout_s``), after waiting at most
        ``gather_s`` more for the events that come with it (e.g. the rest of an epoch's).
        """
        if self._rewind_pending:  # raises while the broker does not answer: nothing is read past the rewind
            self._rewind()
        # librdkafka's batch consume waits for a full batch or the timeout: take what is there, and
        # when nothing is, block for the first message only, then gather the rest briefly.
        raw = self._consumer.consume(max_messages, 0)
        if not raw and timeout_s > 0:
            raw = self._consumer.consume(1, timeout_s)
            if raw and max_messages > 1:
                raw += self._consumer.consume(max_messages - 1, gather_s)
        elif raw and gather_s > 0 and len(raw) < max_messages:
            raw += self._consumer.consume(max_messages - len(raw), gather_s)
        good: list[Message] = []
        for msg in raw:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise FatalError(f"consumer {self.group_id} failed: {error.str()}")
                log.warning("consume error group=%s code=%s reason=%s", self.group_id, error.name(), error.str())
                continue
            good.append(msg)
        if good:
            self._unassigned_since = None  # it reads: it has partitions
        else:
            self._rejoin_if_dropped()  # only after a poll that read nothing: a busy consumer pays nothing for it
        values = [msg.value() for msg in good]
        delivered: list[Delivered] = []
        append = delivered.append
        for msg, value, outcome in zip(good, values, self._decode(good, values), strict=True):
            if not isinstance(outcome, Exception):
                # A message consumed without an error has its position (``position_of``): not checked again
                # per event, nor cast (``typing.cast`` is a call per use: four per event cost ~3 % of this path).
                # ``or b""`` for the type only: every codec rejects a record without a value.
                headers = msg.headers()
                append(Delivered(msg.topic(), msg.partition(), msg.offset(),  # type: ignore[arg-type]
                                 msg.key(), outcome, value or b"",
                                 tuple(headers) if headers else ()))  # type: ignore[arg-type]
            elif isinstance(outcome, DecodeError):
                self.dead_letter(msg, outcome)
            else:  # a decoder bug on these bytes: still this record's
                self._dead_letter(*position_of(msg), msg.key(), value, failure_reason(outcome),
                                  type(outcome).__name__, headers_of(msg))
        return delivered

    def _decode(self, messages: list[Message], values: list[bytes | None]) -> list[OonaMessage[Any] | Exception]:
        """Each message's event or its record failure, in order: one ``decode_batch`` per topic."""
        topics = {msg.topic() for msg in messages}
        limit = self.max_event_bytes
        topic = topics.pop() if len(topics) == 1 else None
        if topic is not None and max(map(len, filter(None, values)), default=0) <= limit:  # None: no value
            return self.codec.decode_batch(self._specs[topic], values)  # one topic, nothing oversized
        outcomes: list[OonaMessage[Any] | Exception | None] = [None] * len(messages)
        by_topic: dict[str, list[int]] = {}
        for i, (msg, value) in enumerate(zip(messages, values, strict=True)):
            if value is not None and len(value) > limit:
                outcomes[i] = OversizedMessageError(f"value of {len(value)} bytes exceeds max_event_bytes={limit}")
            else:
                by_topic.setdefault(position_of(msg)[0], []).append(i)
        for topic, index in by_topic.items():
            decoded = self.codec.decode_batch(self._specs[topic], [values[i] for i in index])
            for i, outcome in zip(index, decoded, strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def dead_letter(self, msg: Message, exc: DecodeError) -> None:
        self._dead_letter(*position_of(msg), msg.key(), msg.value(),
                          exc.reason, type(exc).__name__, headers_of(msg))

    def reject(self, delivered: Delivered, reason: str, error_type: str = "RejectedEvent") -> None:
        """Dead-letter an event that decoded fine but cannot be acted on (e.g. a command for an unknown seed)."""
        self._dead_letter(delivered.topic, delivered.partition, delivered.offset, delivered.key, delivered.value,
                          reason, error_type, delivered.headers)

    def reject_raw(self, msg: Message, reason: str, error_type: str) -> None:
        """Dead-letter a record read outside this consumer (e.g. by a log reader): its bytes and headers as read."""
        topic, partition, offset = position_of(msg)
        self._dead_letter(topic, partition, offset, msg.key(), msg.value(), reason, error_type, headers_of(msg))

    def dead_letter_failure(self, delivered: Delivered, exc: BaseException) -> None:
        """Dead-letter an event whose handling raised: the reason and error type name the exception."""
        log.error("handling failed topic=%s[%d] offset=%d group=%s", delivered.topic, delivered.partition,
                  delivered.offset, self.group_id, exc_info=exc)
        self.reject(delivered, failure_reason(exc), type(exc).__name__)

    def handle_isolated(self, delivered: Delivered, handle: Callable[[Delivered], T]) -> T | None:
        """``handle(delivered)``; when that raises the record's fault, the record is dead-lettered and
        None returned, so that the caller goes on with the next one. Bus errors propagate.

        What ``handle`` changed before it raised stays changed: a handler should check before it
        mutates. The dead letter is committed with the consumer's next ``commit()``.
        """
        try:
            return handle(delivered)
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            self.dead_letter_failure(delivered, exc)
            return None

    def _dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     reason: str, error_type: str, original_headers: Sequence[Header] | None = None) -> None:
        if self._on_dlq_already(topic, partition, offset):
            self.already_dead_lettered += 1
            log.info("not dead-lettered again topic=%s[%d] offset=%d group=%s reason=%s",
                     topic, partition, offset, self.group_id, reason)
            return
        failed_at = datetime.now(UTC)
        headers = dead_letter_headers(original_headers, [
            (DLQ_HEADER_TOPIC, topic.encode()),
            (DLQ_HEADER_PARTITION, str(partition).encode()),
            (DLQ_HEADER_OFFSET, str(offset).encode()),
            (DLQ_HEADER_REASON, reason.encode("utf-8")[:4000]),
            (DLQ_HEADER_ERROR_TYPE, error_type.encode()),
            (DLQ_HEADER_GROUP, self.group_id.encode()),
            (DLQ_HEADER_FAILED_AT, failed_at.isoformat().encode()),
        ])
        self.dead_letters.produce_raw(self.dlq_topic, value, key, headers)
        self.dead_lettered += 1
        self._produced.setdefault((topic, partition), set()).add(offset)
        log.warning("dead-lettered topic=%s[%d] offset=%d group=%s reason=%s",
                    topic, partition, offset, self.group_id, reason)
        if self.on_dead_letter is not None:
            self.on_dead_letter(DeadLetter(
                source_topic=topic, source_partition=partition, source_offset=offset, reason=reason[:4000],
                error_type=error_type, consumer_group=self.group_id, original_key=key, original_value=value,
                failed_at=failed_at,
            ))

    def _on_dlq_already(self, topic: str, partition: int, offset: int) -> bool:
        """Whether this group dead-lettered the record before (this session, or any before it)."""
        if offset in self._produced.get((topic, partition), ()):
            return True
        if self._on_dlq is None:
            self._on_dlq = self._read_dead_letters()
        return offset in self._on_dlq.get((topic, partition), ())

    def _read_dead_letters(self) -> dict[tuple[str, int], set[int]]:
        """This group's dead letters on the DLQ (committed ones): source offsets by source partition."""
        partitions = self._offsets.partitions_of([self.dlq_topic])
        ends = self._offsets.end_offsets(partitions)
        group = self.group_id.encode()
        found: dict[tuple[str, int], set[int]] = {}
        for chunk in scan_range(self._settings, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
            for msg in chunk:
                headers = dict(headers_of(msg) or ())
                source = headers.get(DLQ_HEADER_TOPIC)
                if headers.get(DLQ_HEADER_GROUP) != group or source is None or source.decode() not in self._specs:
                    continue
                try:
                    # A header without a value reads as b"": a ValueError, as any malformed number.
                    found.setdefault((source.decode(), int(headers[DLQ_HEADER_PARTITION] or b"")), set()).add(
                        int(headers[DLQ_HEADER_OFFSET] or b""))
                except (KeyError, TypeError, ValueError):  # not a dead letter of ours after all
                    continue
        log.info("dead letters read group=%s records=%d", self.group_id, sum(map(len, found.values())))
        return found

    def commit(self, timeout_s: float = 120.0) -> None:
        """Commit the positions of everything consumed so far (synchronously; retried while the
        broker is briefly unreachable).

        librdkafka's synchronous commit waits without limit for a group coordinator (it defers the
        commit while none is known), so it runs beside the caller, which logs the wait every few
        seconds and gives the consumer up (``ClientStuckError``) past ``timeout_s``.
        """
        self.dead_letters.flush()

        def skipped(error: KafkaError) -> None:
            if error.code() in _REJOINING:
                # The group lost this member (e.g. across a broker restart): it rejoins on the next poll and
                # resumes from the last commit; the events after it come again and are handled idempotently.
                log.warning("commit skipped group=%s reason=%s", self.group_id, error.str())

        # _NO_OFFSET: nothing consumed since the last commit, nothing to do.
        def waiting(seconds: float) -> None:
            log.warning("commit waiting for the group coordinator group=%s for %.0fs (broker unreachable?)",
                        self.group_id, seconds)

        def commit() -> None:
            with clients.suppress(_REJOINING | {KafkaError._NO_OFFSET}, on_suppressed=skipped):
                clients.retry_transient(lambda: self._consumer.commit(asynchronous=False), timeout_s)

        self._commits.call(f"commit of group {self.group_id}", commit, timeout_s, on_wait=waiting,
                           tick_s=COMMIT_WAIT_LOG_S)

    def wait_for_assignment(self, timeout_s: float = 30.0) -> list[TopicPartition]:
        """Join the group: poll until partitions are assigned (events read meanwhile are returned by catch_up)."""
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            self._early.extend(self.consume(100, 0.1))
            if time.monotonic() > deadline:
                raise FatalError(f"consumer group {self.group_id} got no partitions within {timeout_s:g}s")
        return self._consumer.assignment()

    def catch_up(self, timeout_s: float = 30.0) -> list[Delivered]:
        """Everything on the assigned partitions up to their current end (what was published before now)."""
        got, self._early = self._early, []
        assignment = self._consumer.assignment()
        ends = self._offsets.end_offsets([(tp.topic, tp.partition) for tp in assignment], timeout_s=timeout_s)
        # Until the first fetch a partition has no position; then it starts at the committed offset.
        committed = {(tp.topic, tp.partition): max(tp.offset, 0)
                     for tp in clients.retry_transient(lambda: self._consumer.committed(assignment, timeout=10),
                                                       timeout_s)
                     } if assignment else {}
        progress = ReadToEnds(ends, committed)
        deadline = time.monotonic() + timeout_s
        while True:
            progress.advance(self._consumer)
            if progress.done:
                return got
            if time.monotonic() > deadline:
                raise FatalError(f"consumer group {self.group_id} could not catch up within {timeout_s:g}s")
            got.extend(self.consume(500, 0.1))

    # -- helpers for transactional processing and replays --------------------------------------
    def assignment(self) -> list[TopicPartition]:
        return self._consumer.assignment()

    def positions(self) -> list[TopicPartition]:
        return self._consumer.position(self._consumer.assignment())

    def group_metadata(self) -> object:
        """The group's metadata, opaque: for ``OonaProducer.send_offsets_to_transaction``."""
        return self._consumer.consumer_group_metadata()

    def rewind_to_committed(self, timeout_s: float = 10.0, *, defer: bool = False) -> None:
        """After an aborted transaction: go back to the last committed offsets. When the broker does not
        answer (or ``defer``), the next ``consume`` does it first, so nothing past them is read meanwhile;
        ``rewind_to_beginning`` replaces it."""
        self._produced.clear()  # the aborted transaction's dead letters are not on the DLQ: read it again
        self._on_dlq = None
        self._rewind_pending = True
        if defer:
            return
        try:
            with clients.map_exceptions():
                self._rewind(timeout_s)
        except FatalError:
            raise
        except EsperError as exc:
            log.warning("rewind to the committed offsets deferred group=%s: %s", self.group_id, exc)

    def _rewind(self, timeout_s: float = 10.0) -> None:
        """Seek every assigned partition to the group's committed offset. When this client cannot read
        them (its group coordinator lost after a broker restart, or an offset commit of a producer
        given up pending for ever), they are read by a fresh client, stable ones only. Past
        ``REWIND_GIVE_UP_S`` of failing, FatalError: the process is restarted with new clients."""
        assignment = self._consumer.assignment()
        if assignment:
            try:
                with clients.map_exceptions():
                    committed = {(tp.topic, tp.partition): tp.offset
                                 for tp in self._consumer.committed(assignment, timeout=timeout_s)}
            except EsperError as exc:
                log.warning("committed offsets not read group=%s (%s); asking a fresh client", self.group_id, exc)
                try:
                    committed = self._offsets.committed(self.group_id, [(tp.topic, tp.partition) for tp in assignment],
                                                        timeout_s)
                except Exception as fresh_exc:
                    since = self._rewind_failing_since = self._rewind_failing_since or time.monotonic()
                    if time.monotonic() - since > REWIND_GIVE_UP_S:
                        raise FatalError(f"consumer {self.group_id} cannot read its committed offsets for "
                                         f"{REWIND_GIVE_UP_S:g}s: {fresh_exc}") from None
                    raise
            for (topic, partition), offset in committed.items():
                self._consumer.seek(TopicPartition(topic, partition, offset if offset >= 0 else OFFSET_BEGINNING))
        self._rewind_pending = False
        self._rewind_failing_since = None

    def rewind_to_beginning(self) -> None:
        """Go back to the start of every assigned partition (a projection rebuilding itself)."""
        self._rewind_pending = False
        for tp in self._consumer.assignment():
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

    def close(self) -> None:
        self._commits.close()
        if not self._commits.blocked:  # closing under a commit still blocked in librdkafka would block too
            self._consumer.close()


def dead_letter_from_message(msg: Message) -> DeadLetter:
    """Rebuild the DeadLetter record from a message read off ``esper.dlq``."""
    headers = {k: v for k, v in (headers_of(msg) or [])}

    def text(name: str, default: str = "") -> str:
        value = headers.get(name)
        return value.decode("utf-8", "replace") if value is not None else default

    return DeadLetter(
        source_topic=text(DLQ_HEADER_TOPIC, "unknown"),
        source_partition=int(text(DLQ_HEADER_PARTITION, "0")),
        source_offset=int(text(DLQ_HEADER_OFFSET, "0")),
        reason=text(DLQ_HEADER_REASON, "no reason recorded"),
        error_type=text(DLQ_HEADER_ERROR_TYPE, "unknown"),
        consumer_group=text(DLQ_HEADER_GROUP),
        original_key=msg.key(),
        original_value=msg.value(),
        failed_at=(datetime.fromisoformat(text(DLQ_HEADER_FAILED_AT)) if DLQ_HEADER_FAILED_AT in headers
                   else datetime.now(UTC)),
    )
