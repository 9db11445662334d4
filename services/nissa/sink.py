"""Nissa's sink: every topic (the DLQ included) -> one DuckDB file, exactly once.

The consumer joins no group and commits nothing to Kafka: it ``assign``s every partition
of every topic at the offset stored in the database (``nissa_offsets``), or at the
beginning, and reads with ``isolation.level=read_committed``. A flush writes the batch's
rows and the consumer's positions in one DuckDB transaction (``NissaStore.write``), so a
``kill -9`` at any moment loses nothing that was committed and repeats nothing on restart.
Partitions created after the sink started are picked up on its next start.

Consuming (the calling thread) overlaps with decoding and DuckDB's insert: taken batches go
to one writer thread (``Committer``) through a queue of depth 2; it decodes them (numpy
releases the GIL for its array work, DuckDB for the insert) and is the only user of the
DuckDB connection. Each queued item carries its own offsets, so what one transaction
commits is still exactly its rows and the positions right after them.

Between decoding and the insert, ``Admission`` applies the contracts and the event-id rules
(what a service would dead-letter is dead-lettered here too). No record can crash-loop the
sink (Kafka Streams' processing-exception handler): an unexpected exception while handling a
batch (decode, validation, insert) rolls its transaction back and the batch is retried in
halves, down to the one record that fails, which becomes a ``dead_letters`` row with the
exception's type and message; the rest is stored and the sink goes on. Errors of the database
itself (I/O, a lost writer lock, fencing) and fatal ones are not a record's fault: they stop
the sink. Broker errors never reach this thread (the consuming thread logs and retries them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from services.core.errors import FatalError
from services.nissa.admission import Admission, dead_letter_row
from services.nissa.batch import Batch, Decoders
from services.nissa.errors import NissaError
from services.nissa.log_scan import SCAN_CONFIG
from services.nissa.store import NissaStore
from services.nissa.tables import Table, arrow_batch, dead_letters_table, table_for
from services.oona import clients
from services.oona.admin import OffsetReader
from services.oona.codec import ConfluentCodec, make_codec
from services.oona.isolation import is_record_failure
from services.oona.log_reader import ReadToEnds
from services.oona.schema_log import schema_log_reader
from services.oona.schema_store import SchemaStore
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, data_topics

log = logging.getLogger(__name__)

# A bulk reader (large fetches, read_committed, as every log scan) that keeps its own offsets.
SINK_CONSUMER_CONFIG: dict[str, str | int | bool] = SCAN_CONFIG | {
    "enable.auto.offset.store": False,
    # A stored offset that retention already deleted: start at the oldest event still there.
    "auto.offset.reset": "earliest",
}


# Not a record's fault: the database, the process or the writer's standing failed. These stop the sink,
# and so does whatever is never a record's fault anywhere (bus errors, fatal ones: ``is_record_failure``).
NOT_ISOLATED: tuple[type[BaseException], ...] = (
    NissaError, OSError, MemoryError, duckdb.IOException, duckdb.FatalException, duckdb.OutOfMemoryException)


def _isolated(exc: Exception) -> bool:
    """Whether a failure of a batch may be one record's (retry in halves, dead-letter the one)."""
    return is_record_failure(exc) and not isinstance(exc, NOT_ISOLATED)


def default_db_path(state_dir: Path) -> Path:
    return Path(state_dir) / "nissa" / "esper.duckdb"


def sink_tables(store: SchemaStore | None = None) -> list[Table]:
    store = store or SchemaStore()
    return [table_for(spec, store) for spec in data_topics() if not spec.raw] + [dead_letters_table()]


class Committer:
    """The one thread that decodes taken batches and talks to DuckDB: (messages, offsets[, decoded]) items in order."""

    def __init__(self, batch: Batch, store: NissaStore, on_commit: Callable[[int], None] | None) -> None:
        self.batch = batch
        self.store = store
        self.admission = Admission(getattr(batch, "routes", {}), store)
        self.dead_lettered = 0  # records the per-record retry dead-lettered
        self.on_commit = on_commit
        self.committed_rows = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="nissa-committer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    if item == "release":
                        self.store.release()
                    else:
                        self.committed_rows += self._commit(*item)
                        if self.on_commit is not None:
                            self.on_commit(self.committed_rows)
            except BaseException as exc:  # handed to the consuming thread, which raises it
                self.error = exc
            finally:
                self._queue.task_done()

    def _commit(self, pending: Mapping[str, list], offsets: dict[tuple[str, int], int],
                decoded: dict[str, list[pa.Table]] | None = None) -> int:
        """Admit and write one item: ``pending`` messages, decoded here unless ``decoded`` holds them already
        (archived rows: ``pending`` then gives their messages only if a dead letter or a retry needs them)."""
        try:
            return self.admission.write(pending, self.batch.decode(pending) if decoded is None else decoded, offsets)
        except Exception as exc:
            if not _isolated(exc):
                raise
            records = [(topic, m) for topic, messages in pending.items() for m in messages]
            log.warning("nissa batch failed, retrying record by record records=%d error=%s: %s",
                        len(records), type(exc).__name__, exc)
            written = self._bisect(records, exc)
            return written + self.admission.write({}, {}, offsets)  # then the batch's own end positions

    def _bisect(self, records: list[tuple[str, Message]], error: Exception) -> int:
        """Store ``records`` (which failed together with ``error``) in halves; dead-letter the one that fails."""
        if len(records) == 1:
            return self._dead_letter(records[0][1], error)
        written = 0
        half = len(records) // 2
        for part in (records[:half], records[half:]):
            pending: dict[str, list] = {}
            for topic, message in part:
                pending.setdefault(topic, []).append(message)
            try:
                written += self.admission.write(pending, self.batch.decode(pending), _ends(part))
            except Exception as exc:
                if not _isolated(exc):
                    raise
                written += self._bisect(part, exc)
        return written

    def _dead_letter(self, message, error: Exception) -> int:
        log.warning("nissa dead-lettered a record it could not store topic=%s[%d] offset=%d error=%s: %s",
                    message.topic(), message.partition(), message.offset(), type(error).__name__, error)
        row = dead_letter_row(message, f"nissa could not store this record: {type(error).__name__}: {error}",
                              type(error).__name__)
        written = self.admission.write({}, {dead_letters_table().name: [arrow_batch(dead_letters_table(), [row])]},
                                       {(message.topic(), message.partition()): message.offset() + 1})
        self.dead_lettered += 1
        return written

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, item) -> None:
        self.check()
        self._queue.put(item)

    def wait(self) -> None:
        """Until everything submitted is committed (or failed: then raise)."""
        self._queue.join()
        self.check()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _ends(records: list[tuple[str, Message]]) -> dict[tuple[str, int], int]:
    """The position right after the last of ``records`` in each of their partitions."""
    ends: dict[tuple[str, int], int] = {}
    for topic, message in records:
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None  # every record read has its place
        key = (topic, partition)
        ends[key] = max(ends.get(key, 0), offset + 1)
    return ends


class NissaSink:
    """Consume -> batch -> one DuckDB transaction per flush (rows + offsets).

    A flush happens when ``batch_rows`` messages are pending, when the oldest pending
    message waited ``max_delay_s``, or when the log has nothing new; one consume call reads
    at most ``batch_rows`` (and 20,000) messages.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        db_path: Path,
        *,
        topics: list[TopicSpec] | None = None,
        batch_rows: int = 50_000,
        max_delay_s: float = 0.5,
        hold_s: float = 2.0,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._offsets = OffsetReader(settings)  # end offsets through a leader's loss
        # Every registered topic but the bus-internal schema log (schemas are not events).
        self.topics = topics if topics is not None else list(data_topics(settings.topic_prefix))
        schemas = SchemaStore()
        tables = sink_tables(schemas)
        by_record = {t.record_name: t for t in tables}
        routes = {spec.name: (spec, dead_letters_table() if spec.raw else by_record[spec.record_name])
                  for spec in self.topics}
        fallback = make_codec(settings.schema_registry_url, schemas)
        self.batch = Batch(routes, Decoders(schemas, schema_log_reader(settings)),
                           fallback=fallback if isinstance(fallback, ConfluentCodec) else None)
        self.store = NissaStore(db_path, tables, hold_s=hold_s)
        self.batch_rows = batch_rows
        self.max_delay_s = max_delay_s
        self.on_commit = on_commit
        self._committer: Committer | None = None
        self._rows_before_close = 0
        self._first_pending = 0.0
        self._consumer: Consumer | None = None
        self._assignment: list[TopicPartition] = []
        self._start: dict[tuple[str, int], int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the schema and views, then assign every partition at its stored offset."""
        self.store.create_schema()  # takes the writer lock first: a second sink stops here
        stored = self.store.offsets()
        self._committer = Committer(self.batch, self.store, self.on_commit)
        self._committer.admission.load()  # before the loop (and its stall watchdog): one scan of the stored ids
        self.store.release()
        # Offsets live in DuckDB, with the rows: the group is a throwaway and commits nothing.
        self._consumer = clients.consumer(self.settings, SINK_CONSUMER_CONFIG,
                                          {"group.id": f"nissa-{uuid.uuid4().hex[:8]}"})
        # Metadata first: assigning partitions whose leaders the client already knows saves ~0.5 s of backoff.
        metadata = self._consumer.list_topics(timeout=self.settings.connect_timeout_s).topics
        names = [spec.name for spec in self.topics]
        missing = [name for name in names if name not in metadata or metadata[name].error is not None]
        if missing:
            raise FatalError(f"topics missing on the cluster: {', '.join(sorted(missing))} (run `esper topics create`)")
        partitions = [(name, p) for name in names for p in sorted(metadata[name].partitions)]
        self._start = {(t, p): stored.get((t, p), 0) for t, p in partitions}
        self._assignment = [TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)) for t, p in partitions]
        self._consumer.assign(self._assignment)
        log.info("nissa sink started db=%s partitions=%d resumed=%d", self.store.path, len(partitions), len(stored))

    def close(self) -> None:
        """Flush what is pending, then let go of the consumer and the file."""
        try:
            if self._consumer is not None:
                self.flush(wait=True)
        finally:
            if self._committer is not None:
                self._committer.stop()
                self._rows_before_close = self._committer.committed_rows
                self._committer = None
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self.store.close()

    @property
    def committed_rows(self) -> int:
        """Rows committed since ``start`` (after ``close``: in all, as the CLI reports at its stop)."""
        return self._committer.committed_rows if self._committer is not None else self._rows_before_close

    # -- the loop ------------------------------------------------------------------------------------
    def step(self, timeout_s: float = 0.2) -> int:
        """Consume up to ``batch_rows`` messages (flushing when due); returns the messages read."""
        assert self._consumer is not None and self._committer is not None, "start() first"
        messages = self._consumer.consume(min(self.batch_rows, 20_000), timeout_s)
        errors = [error for m in messages if (error := m.error()) is not None]
        good = [m for m in messages if m.error() is None] if errors else messages
        for error in errors:
            if error.fatal():
                raise FatalError(f"nissa consumer failed: {error.str()}")
            log.warning("consume error code=%s reason=%s", error.name(), error.str())
        if good:
            if not self.batch.size:
                self._first_pending = time.monotonic()
            self.batch.add(good)
        due = self.batch.size >= self.batch_rows or (
            self.batch.size and (not good or time.monotonic() - self._first_pending >= self.max_delay_s))
        if due:
            self.flush()
        elif not good and not self.batch.size:
            self._committer.submit("release")  # idle: let readers in
        self._committer.check()
        return len(good)

    def flush(self, wait: bool = False) -> None:
        """Queue what is pending, with the positions it ends at, as one DuckDB transaction.

        With ``wait``, return once everything queued is committed.
        """
        assert self._consumer is not None and self._committer is not None, "start() first"
        if self.batch.size:
            positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(self._assignment)
                         if tp.offset >= 0}
            self._committer.submit((self.batch.take(), positions))
        if wait:
            self._committer.wait()

    def run_until_caught_up(self, timeout_s: float = 60.0) -> int:
        """Ingest until every partition reached the end offsets it had when called; returns messages read."""
        assert self._consumer is not None, "start() first"
        ends = self._offsets.end_offsets([(tp.topic, tp.partition) for tp in self._assignment])
        # A partition nothing was read from since assign() has no position yet: it is where it started.
        progress = ReadToEnds(ends, self._start)
        deadline = time.monotonic() + timeout_s
        read = 0
        while True:
            read += self.step()
            progress.advance(self._consumer)
            if progress.done:
                self.flush(wait=True)
                return read
            if time.monotonic() > deadline:
                raise FatalError(f"nissa did not catch up within {timeout_s:g}s")
