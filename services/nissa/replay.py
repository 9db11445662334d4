"""``esper replay``: one run's analytics rebuilt into a fresh DuckDB file, from the log or the archive.

What is read:

* run-scoped topics (keyed by ``run_id``: sessions, health, epochs, decisions, commands,
  transitions, field reports): only the run's messages (key == run id), from the start of
  each partition, or from ``from_offset`` / the first offset at or after ``from_time`` in
  every partition;
* shared topics (blueprints submitted, kernels ready / characterised, the kernel library,
  the DLQ): always whole, from the beginning. They are small, they are the context of the
  run (the catalogue its seeds were chosen from; a counterfactual replay needs it), and
  they are not keyed by run, so they cannot be cut to one. A replay database therefore
  also holds every blueprint and kernel, and every dead letter.

The same fast path as the sink: ``Batch`` (decoding per writer schema, dead letters for
what does not decode) then ``NissaStore.write`` in the ``Committer`` thread, so the replay
database has exactly the sink's tables and views; ``nissa_offsets`` holds where the replay
stopped reading. The file at ``out`` is replaced.

With a policy, the values of Tamiyo's input topics and of the catalogue topics are kept
while replaying and re-driven through that policy (Tamiyo's ``replay_api``): the would-be
decisions land in ``counterfactual_decisions`` next to the real ``adaptation_decision``
rows, and ``decision_comparison`` compares them per epoch. Nothing is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from services.core.progress import progress_bar
from services.nissa.archive import Source
from services.nissa.batch import Batch, Decoders
from services.nissa.counterfactual import write_counterfactual
from services.nissa.errors import UnknownRunError
from services.nissa.sink import Committer, sink_tables
from services.nissa.store import NissaStore
from services.nissa.tables import dead_letters_table
from services.oona.codec import make_codec
from services.oona.schema_store import SchemaStore
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import data_topics

BATCH_ROWS = 50_000


def default_replay_path(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "nissa" / f"replay-{run_id}.duckdb"


@dataclass
class ReplayResult:
    db: Path
    run_id: str
    events: int  # messages written: the run's and the shared topics'
    run_events: int  # of which the run's own
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows in the fresh file
    policy_version: str | None = None
    counterfactual: int = 0  # would-be decisions written
    agreeing_epochs: int = 0  # epochs where they equal the real ones
    compared_epochs: int = 0
    as_of_epochs: int = 0  # epochs decided with the catalogue their recorded decision names (v3; else the whole)


class ReplayWriter:
    """Messages (anything with the Message accessors) -> a fresh DuckDB file, through Batch + NissaStore.

    ``prefix`` is the topic prefix of the message topics; ``keep`` names registry topics whose
    records (partition, offset, value bytes) are kept in ``kept`` in the order added (for a counterfactual
    replay: the positions say which catalogue each decision was made with).
    """

    def __init__(self, db: Path, run_id: str, prefix: str = "", keep: Iterable[str] = (),
                 batch_rows: int = BATCH_ROWS, schema_log: Any = None) -> None:
        db = Path(db)
        for stale in (db, db.with_name(db.name + ".wal")):
            stale.unlink(missing_ok=True)
        schemas = SchemaStore()
        tables = sink_tables(schemas)
        by_record = {t.record_name: t for t in tables}
        specs = data_topics(prefix)
        routes = {s.name: (s, dead_letters_table() if s.raw else by_record[s.record_name]) for s in specs}
        self.batch = Batch(routes, Decoders(schemas, schema_log))  # the schema log: writers one version ahead
        self.store = NissaStore(db, tables, hold_s=float("inf"))
        self.store.create_schema()
        self.committer = Committer(self.batch, self.store, None)
        self.db = db
        self.batch_rows = batch_rows
        self.prefix = prefix
        self._run_key = run_id.encode()
        self._run_topics = {s.name for s in specs if s.run_scoped}
        self._keep = {prefix + name: name for name in keep}
        self.kept: dict[str, list[tuple[int, int, bytes]]] = {name: [] for name in keep}
        self.events = 0
        self.run_events = 0

    def add(self, messages: list) -> None:
        """Keep the run's messages of run-scoped topics and every message of the shared ones."""
        if not messages:
            return
        run_topics, key = self._run_topics, self._run_key
        topics = [m.topic() for m in messages]
        first = topics[0]
        if topics.count(first) == len(topics):  # one topic (a scan of one run's partition): one test per message
            if first in run_topics:
                keys = [m.key() for m in messages]
                chosen = messages if keys.count(key) == len(keys) else [
                    m for m, k in zip(messages, keys, strict=True) if k == key]
            else:
                chosen = messages
            run_events = len(chosen) if first in run_topics else 0
        else:
            chosen = [m for m, t in zip(messages, topics, strict=True) if t not in run_topics or m.key() == key]
            run_events = sum(1 for m in chosen if m.topic() in run_topics)
        if not chosen:
            return
        self.events += len(chosen)
        self.run_events += run_events
        if self._keep:
            for m in chosen:
                name = self._keep.get(m.topic())
                if name is not None:
                    self.kept[name].append((m.partition(), m.offset(), m.value()))
        self.batch.add(chosen)
        if self.batch.size >= self.batch_rows:
            self.committer.submit((self.batch.take(), {}))

    def add_decoded(self, topic: str, typed: pa.Table, raw: pa.Table) -> None:
        """Rows already decoded (the archive's typed columns, ``typed``) of ``topic``, with their RAW_COLUMNS.

        They go through the same admission (contracts, event ids) and transaction as decoded messages; the
        messages themselves are built from ``raw`` only if a dead letter or a per-record retry needs them.
        """
        from services.nissa.archive import archived_messages

        if not typed.num_rows:
            return
        self.events += typed.num_rows
        self.run_events += typed.num_rows if topic in self._run_topics else 0
        name = self._keep.get(topic)
        if name is not None:
            self.kept[name].extend(zip(raw.column("kafka_partition").to_pylist(),
                                       raw.column("kafka_offset").to_pylist(),
                                       raw.column("kafka_value").to_pylist(), strict=True))
        table = self.batch.routes[topic][1]
        self.committer.submit((LazyMessages(topic, lambda: archived_messages(topic, raw)), {},
                               {table.name: [typed]}))

    def copy_archived(self, src: Source) -> int:
        """``src``'s rows archived decoded (with the contract's verdict), copied by DuckDB itself
        (``archive_copy.py``) once everything submitted before is written; returns the rows read."""
        from services.nissa.archive_copy import copy_archived

        self.committer.wait()  # the connection is this thread's until the next submit
        name = self._keep.get(src.spec.name)
        copied = copy_archived(self.store, self.committer.admission, src, keep=name is not None)
        self.events += copied.rows
        self.run_events += copied.rows if src.spec.name in self._run_topics else 0
        if name is not None:
            self.kept[name].extend(copied.kept)
        return copied.rows

    def finish(self, offsets: dict[tuple[str, int], int]) -> dict[str, int]:
        """Write what is pending with the end ``offsets``; close the file; rows per table."""
        try:
            self.committer.submit((self.batch.take(), offsets))
            self.committer.wait()
        finally:
            self.committer.stop()
            self.store.close()
        with duckdb.connect(str(self.db), read_only=True) as con:
            return {name: con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0] for name in self.store.tables}


class LazyMessages(Mapping[str, list]):
    """``{topic: messages}`` whose messages are built on first use (most batches never need them)."""

    def __init__(self, topic: str, build: Callable[[], list]) -> None:
        self._topic, self._build = topic, build
        self._messages: list | None = None

    def __getitem__(self, topic: str) -> list:
        if topic != self._topic:
            raise KeyError(topic)
        if self._messages is None:
            self._messages = self._build()
        return self._messages

    def __iter__(self) -> Iterator[str]:
        return iter((self._topic,))

    def __len__(self) -> int:
        return 1


def _replay(run_id: str, out: Path, feed: Callable[[ReplayWriter, Callable[[int], None]], None], total: int,
            offsets: dict[tuple[str, int], int], *, prefix: str, policy: Path | None, progress: bool,
            registry_url: str | None = None, schema_log: Any = None) -> ReplayResult:
    keep: tuple[str, ...]
    loaded, keep = None, ()
    if policy is not None:  # fail on a bad policy file before the long part
        from services.tamiyo import replay_api  # torch: only for a counterfactual replay

        loaded, keep = replay_api.load_policy(policy), replay_api.NEEDED_TOPICS
    start = time.perf_counter()
    writer = ReplayWriter(out, run_id, prefix=prefix, keep=keep,
                          schema_log=schema_log)
    try:
        with progress_bar(f"replay {run_id}", total, progress) as advance:
            feed(writer, advance)
    finally:
        rows = writer.finish(offsets)
    if writer.run_events == 0:
        out.unlink(missing_ok=True)
        raise UnknownRunError(f"no events of run {run_id!r} to replay")
    result = ReplayResult(out, run_id, writer.events, writer.run_events, time.perf_counter() - start, rows)
    if loaded is not None:
        version, decisions, as_of = replay_api.counterfactual_decisions(run_id, writer.kept, make_codec(registry_url),
                                                                        loaded)
        result.as_of_epochs = as_of
        with duckdb.connect(str(out)) as con:
            write_counterfactual(con, run_id, decisions)
            agree, compared = con.execute("SELECT count(*) FILTER (WHERE same), count(*) FROM decision_comparison"
                                          ).fetchall()[0]
        result.policy_version, result.counterfactual = version, len(decisions)
        result.agreeing_epochs, result.compared_epochs = agree, compared
        result.seconds = time.perf_counter() - start
    return result


def replay_from_kafka(settings: KafkaSettings, run_id: str, out: Path, *, from_offset: int | None = None,
                      from_time: datetime | None = None, policy: Path | None = None,
                      progress: bool = False) -> ReplayResult:
    """Replay ``run_id`` from the broker into a fresh DuckDB file at ``out``."""
    from services.nissa.log_scan import log_ranges, scan
    from services.oona.schema_log import schema_log_reader

    specs = data_topics(settings.topic_prefix)
    ranges = log_ranges(settings, [s.name for s in specs if s.run_scoped], from_offset=from_offset,
                        from_time=from_time)
    ranges |= log_ranges(settings, [s.name for s in specs if not s.run_scoped])
    total = sum(end - start for start, end in ranges.values())
    def feed(writer: ReplayWriter, advance: Callable[[int], None]) -> None:
        for messages in scan(settings, ranges, on_position=advance):
            writer.add(messages)

    return _replay(run_id, Path(out), feed, total,
                   {key: end for key, (_, end) in ranges.items()}, prefix=settings.topic_prefix, policy=policy,
                   progress=progress, registry_url=settings.schema_registry_url,
                   schema_log=schema_log_reader(settings))


def replay_from_archive(archive: Path, run_id: str, out: Path, *, from_offset: int | None = None,
                        from_time: datetime | None = None, policy: Path | None = None,
                        progress: bool = False) -> ReplayResult:
    """Replay ``run_id`` from an ``esper archive`` folder (no broker needed) into a fresh DuckDB file.

    Rows the archive holds decoded, with the contract's verdict, are copied by DuckDB itself from the
    Parquet files (``archive_copy.py``: no Avro decoding, and no dead letter for a writer schema newer
    than this code: it was decoded when archived, with the schema log); rows of files written before
    the verdict was archived go to the tables as Arrow columns through the sink's admission; the rest
    are decoded from their exact bytes.
    """
    from services.nissa.archive import ArchiveReader, archived_messages

    reader = ArchiveReader(archive)
    selection = reader.select(run_id, from_offset=from_offset, from_time=from_time)
    if not selection.run_rows:
        raise UnknownRunError(f"no events of run {run_id!r} in the archive {archive}")

    copied = frozenset(src.spec.name for src in selection.sources if src.verdicts and not src.spec.raw)

    def feed(writer: ReplayWriter, advance: Callable[[int], None]) -> None:
        for src in selection.sources:
            if src.spec.name in copied:
                advance(writer.copy_archived(src))
        for topic, typed, raw in selection.items(advance, copied):
            if typed is None:
                writer.add(archived_messages(topic, raw))
            else:
                writer.add_decoded(topic, typed, raw)

    return _replay(run_id, Path(out), feed, selection.rows, selection.ends, prefix="", policy=policy,
                   progress=progress)
