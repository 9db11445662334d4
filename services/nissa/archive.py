"""``esper archive``: every topic to Parquet, incrementally, so history outlives broker retention.

Layout (``DIR`` defaults to ``STATE_DIR/nissa/archive``)::

    DIR/manifest.json                                   next offset per (topic, partition) archived
    DIR/topic=<registry topic>/run_id=<run>/part-<partition>-<first offset>.parquet

Topics are named without the deployment's prefix (the manifest records the prefix);
``run_id`` is the message key of run-scoped topics and ``_shared`` for the others
(compilation, validation, library, DLQ). Each file holds one archiving pass of one
partition for one run, rows in offset order, with:

* the raw record: ``kafka_partition``, ``kafka_offset``, ``kafka_timestamp`` (ms, UTC),
  ``kafka_key``, ``kafka_value`` (the exact Avro bytes), ``kafka_headers`` (list of
  key/value structs; the DLQ's metadata lives there);
* ``decoded`` and the typed columns of the sink's table for that topic (``tables.py``,
  decoded by ``batch.py``): NULL where the value did not decode (``decoded`` false).

Incremental: the manifest is rewritten (atomically) after each partition's files are
written, so a crash repeats at most that partition's pass, whose files are overwritten
under the same names. Offsets retention deleted before they were archived are reported
as ``lost``.

Reading back needs no broker: ``ArchiveReader.select`` reads one run through DuckDB's own
Parquet reader: the rows the archive holds decoded come out as Arrow columns of the sink's
tables (decoded when archived, with the schema log: events of a newer writer schema than this
code knows are read as archived, not dead-lettered), the rest as raw messages that replay
decodes from the exact bytes (or dead-letters), and
``archive_connection`` is an in-memory DuckDB with a view per sink table over the Parquet
files (``read_parquet``, ``hive_partitioning=false``: the ``topic=``/``run_id=`` folder
names would otherwise replace the envelope's own ``topic`` and ``run_id`` columns) and the
sink's analytic views on top.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.nissa.admission import Contracts
from services.nissa.errors import ArchiveError
from services.nissa.tables import Table
from services.oona.schema_log import schema_log_reader
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

MANIFEST = "manifest.json"
SHARED_RUN = "_shared"
CHUNK = 20_000

HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
RAW_FIELDS = [
    pa.field("kafka_partition", pa.int32()), pa.field("kafka_offset", pa.int64()),
    pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")), pa.field("kafka_key", pa.binary()),
    pa.field("kafka_value", pa.binary()), pa.field("kafka_headers", HEADERS_TYPE),
]
RAW_COLUMNS = [f.name for f in RAW_FIELDS]
ARCHIVE_COLUMNS = (*RAW_COLUMNS, "decoded")  # what every archive file holds besides the typed columns
# The contract's verdict on a decoded row when it was archived: NULL when it passes, else the reason.
VERDICT = "contract_violation"


# -- the manifest (pure) -------------------------------------------------------------------------
@dataclass
class Manifest:
    """Next offset to archive per ``(registry topic, partition)``; ``lost`` counts offsets never archived."""

    prefix: str = ""
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    lost: dict[tuple[str, int], int] = field(default_factory=dict)

    def plan(self, available: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """``(start, end)`` to archive now, given ``(earliest, end)`` still on the broker per partition."""
        return {key: (min(max(self.next_offsets.get(key, 0), earliest), end), end)
                for key, (earliest, end) in available.items()}

    def archived(self, key: tuple[str, int], start: int, end: int) -> None:
        """Record that ``start <= offset < end`` of ``key`` is archived (a gap before ``start`` is lost)."""
        gap = start - self.next_offsets.get(key, 0)
        if gap > 0:
            self.lost[key] = self.lost.get(key, 0) + gap
        self.next_offsets[key] = end

    def to_json(self) -> str:
        def listed(d: dict) -> list:
            return [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(d.items())]
        return json.dumps({"version": 1, "prefix": self.prefix, "next_offsets": listed(self.next_offsets),
                           "lost": listed(self.lost)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not an archive manifest (version 1)")

        def keyed(items: list) -> dict:
            return {(str(i["topic"]), int(i["partition"])): int(i["offset"]) for i in items}
        return cls(str(data.get("prefix", "")), keyed(data["next_offsets"]), keyed(data.get("lost", [])))


def load_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.exists():
        return Manifest()
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"archive manifest {path} is unreadable ({exc})") from None


def save_manifest(root: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (temporary file + rename)."""
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)


# -- archive rows (pure) -------------------------------------------------------------------------
def raw_columns(messages: list) -> list[pa.Array]:
    """The RAW_FIELDS arrays of messages (Message accessors)."""
    headers = [m.headers() for m in messages]
    return [
        pa.array([m.partition() for m in messages], pa.int32()),
        pa.array([m.offset() for m in messages], pa.int64()),
        pa.array([m.timestamp()[1] for m in messages], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        pa.array([m.key() for m in messages], pa.binary()),
        pa.array([m.value() for m in messages], pa.binary()),
        pa.array([[{"key": k, "value": v} for k, v in h] if h else None for h in headers], HEADERS_TYPE),
    ]


def archive_table(table: Table, typed: list[pa.Table], messages: list, contracts: Contracts | None = None
                  ) -> pa.Table:
    """One row per message (one partition, offset order): typed columns aligned by offset, then raw.

    ``typed`` are the Batch's Arrow tables for ``table`` (rows for the values that decoded). With
    ``contracts``, the rows also carry the contract's verdict on each decoded row (``VERDICT``: NULL
    when it passes, else the reason), which a replay from the archive then takes as it is.
    """
    raw = raw_columns(messages)
    offsets = raw[1].to_numpy()
    if contracts is not None:
        by_offset = {m.offset(): m for m in messages}
        typed = [part.append_column(VERDICT, pa.array(
            [reasons.get(row) for row in range(part.num_rows)] if (reasons := contracts.rejections(
                table.name, part, lambda _partition, offset: by_offset[offset])) else [None] * part.num_rows,
            pa.string())) for part in typed]
    decoded = pa.concat_tables(typed) if typed else table.arrow_schema.empty_table()
    if contracts is not None and VERDICT not in decoded.column_names:
        decoded = decoded.append_column(VERDICT, pa.nulls(decoded.num_rows, pa.string()))
    have = decoded.column("kafka_offset").to_numpy() if decoded.num_rows else np.empty(0, np.int64)
    order = np.argsort(have, kind="stable")
    ordered = have[order]
    at = np.searchsorted(ordered, offsets)
    found = at < len(have)
    found[found] = ordered[at[found]] == offsets[found]
    # NULL indices take NULL rows: the values that did not decode.
    index = pa.array(order[np.where(found, at, 0)] if len(have) else np.zeros(len(offsets), np.int64), mask=~found)
    aligned = decoded.drop_columns(["kafka_partition", "kafka_offset"]).take(index)
    columns, fields = [*aligned.columns, pa.array(found)], [*aligned.schema, pa.field("decoded", pa.bool_())]
    if VERDICT in aligned.column_names:  # after ``decoded``
        at = aligned.schema.get_field_index(VERDICT)
        columns.append(columns.pop(at))
        fields.append(fields.pop(at))
    columns, fields = [*columns, *raw], [*fields, *RAW_FIELDS]
    schema = pa.schema(fields)
    return pa.Table.from_arrays(columns, schema=schema)


def run_folder(key: bytes | None, run_scoped: bool) -> str:
    if not run_scoped or not key:
        return f"run_id={SHARED_RUN}"
    return "run_id=" + quote(key.decode("utf-8", "replace"), safe="-_.")


def write_archive_files(root: Path, topic: str, run_scoped: bool, rows: pa.Table) -> list[Path]:
    """Write ``rows`` (one partition) as one Parquet file per run; returns the paths."""
    if not rows.num_rows:
        return []
    keys = rows.column("kafka_key").to_pylist()
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(run_folder(key, run_scoped), []).append(i)
    partition = rows.column("kafka_partition")[0].as_py()
    written = []
    for folder, index in groups.items():
        part = rows.take(pa.array(index)) if len(index) != rows.num_rows else rows
        first = part.column("kafka_offset")[0].as_py()
        path = Path(root) / f"topic={topic}" / folder / f"part-{partition}-{first}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path)
        written.append(path)
    return written


# -- writing from Kafka ---------------------------------------------------------------------------
@dataclass
class ArchiveResult:
    root: Path
    events: int
    files: list[Path]
    lost: int  # offsets that retention deleted before they could be archived (this pass)


def default_archive_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "nissa" / "archive"


def archive_log(settings: KafkaSettings, root: Path, progress: bool = False) -> ArchiveResult:
    """Archive everything new on every topic into ``root``; returns what this pass wrote."""
    from services.core.progress import progress_bar
    from services.nissa.batch import Batch, Decoders
    from services.nissa.log_scan import log_ranges, scan
    from services.nissa.sink import sink_tables
    from services.nissa.tables import dead_letters_table
    from services.oona.schema_store import SchemaStore
    from services.oona.topic_registry import data_topics

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    if manifest.next_offsets and manifest.prefix != settings.topic_prefix:
        raise ArchiveError(f"archive {root} holds topics of prefix {manifest.prefix!r}, not "
                           f"{settings.topic_prefix!r}; archive into another folder")
    manifest.prefix = settings.topic_prefix
    prefix = settings.topic_prefix
    specs = {s.name: s for s in data_topics(prefix)}
    schemas = SchemaStore()
    tables = sink_tables(schemas)
    by_record = {t.record_name: t for t in tables}
    routes = {s.name: (s, dead_letters_table() if s.raw else by_record[s.record_name]) for s in specs.values()}
    batch = Batch(routes, Decoders(schemas, schema_log_reader(settings)))  # writers one version ahead too
    contracts = Contracts(routes)
    available = {(t[len(prefix):], p): r for (t, p), r in log_ranges(settings, list(specs)).items()}
    plan = manifest.plan(available)
    lost_before = sum(manifest.lost.values())
    events, files = 0, []
    with progress_bar("archive", sum(end - start for start, end in plan.values()), progress) as advance:
        for (name, partition), (start, end) in sorted(plan.items()):
            if end > start:
                spec = specs[prefix + name]
                messages = [m for chunk in scan(settings, {(spec.name, partition): (start, end)}, on_position=advance)
                            for m in chunk]
                table = routes[spec.name][1]
                typed = batch.decode({spec.name: messages}).get(table.name, []) if messages else []
                rows = (archive_table(table, typed, messages, contracts) if messages
                        else table.arrow_schema.empty_table())
                files += write_archive_files(root, name, spec.run_scoped, rows)
                events += len(messages)
            manifest.archived((name, partition), start, end)
            save_manifest(root, manifest)
    return ArchiveResult(root, events, files, sum(manifest.lost.values()) - lost_before)


# -- reading back (no broker) ---------------------------------------------------------------------
class ArchivedMessage:
    """A message read back from the archive, with the confluent-kafka Message accessors batch.py uses."""

    __slots__ = ("_topic", "_partition", "_offset", "_timestamp", "_key", "_value", "_headers")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                 value: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._timestamp, self._key, self._value = timestamp, key, value
        self._headers = headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)  # TIMESTAMP_CREATE_TIME

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list | None:
        return self._headers

    def error(self) -> None:
        return None


def archived_messages(topic: str, raw: pa.Table) -> list[ArchivedMessage]:
    """The messages of ``raw`` (RAW_COLUMNS rows of one topic), for the per-message path of batch.py."""
    columns = [raw.column(name).to_pylist() for name in RAW_COLUMNS]
    return [ArchivedMessage(topic, p, o, int(ts.timestamp() * 1000) if ts else 0, k, v,
                            [(x["key"], x["value"]) for x in h] if h else None)
            for p, o, ts, k, v, h in zip(*columns, strict=True)]


@dataclass
class Source:
    """One topic's archived rows that a replay reads: a ``read_parquet`` over its files and a filter."""

    spec: TopicSpec
    table: Table  # the sink's table for the topic (``dead_letters`` for the DLQ)
    source: str
    where: str
    columns: str  # the table's columns as SQL over ``source`` (defaults where older files lack one)
    verdicts: bool = False  # every file carries the contract's verdict (VERDICT): DuckDB can copy the rows


@dataclass
class Selection:
    """What a replay reads from the archive: ``rows`` messages (``run_rows`` of the run itself).

    ``items`` reads them through DuckDB's Parquet reader, per topic in (partition, offset) order:
    ``(topic, typed, raw)`` with ``typed`` the rows the archive holds decoded, in the sink table's
    columns, and ``raw`` their RAW_COLUMNS; then ``(topic, None, raw)`` for the rows it could not
    decode (and every row of the DLQ), which replay decodes (or dead-letters) from the exact bytes.
    """

    sources: list[Source]
    rows: int
    run_rows: int
    ends: dict[tuple[str, int], int]
    batch_rows: int = 100_000

    def items(self, advance: Callable[[int], None], copied: frozenset[str] = frozenset()
              ) -> Iterator[tuple[str, pa.Table | None, pa.Table]]:
        """As the class says; for the topics in ``copied`` (their decoded rows stored already by DuckDB
        itself, ``archive_copy.py``) only the rows the archive could not decode."""
        con = duckdb.connect()
        try:
            for src in self.sources:
                order = "ORDER BY kafka_partition, kafka_offset"
                raw_columns = ", ".join(RAW_COLUMNS)
                extra = ", ".join(c for c in RAW_COLUMNS if c not in ("kafka_partition", "kafka_offset"))
                if not src.spec.raw and src.spec.name not in copied:
                    typed_names = src.table.column_names
                    query = f"SELECT {src.columns}, {extra} FROM {src.source} WHERE {src.where} AND decoded {order}"
                    for batch in _batches(con, query, self.batch_rows):
                        both = pa.Table.from_batches([batch])
                        typed = both.select(typed_names).cast(src.table.arrow_schema)
                        yield src.spec.name, typed, both.select(RAW_COLUMNS)
                        advance(batch.num_rows)
                undecoded = "" if src.spec.raw else " AND NOT decoded"
                query = f"SELECT {raw_columns} FROM {src.source} WHERE {src.where}{undecoded} {order}"
                for batch in _batches(con, query, CHUNK):
                    yield src.spec.name, None, pa.Table.from_batches([batch]).cast(pa.schema(RAW_FIELDS))
                    advance(batch.num_rows)
        finally:
            con.close()


def _batches(con: duckdb.DuckDBPyConnection, query: str, rows: int) -> Iterator[pa.RecordBatch]:
    try:
        reader = con.sql(query).to_arrow_reader(rows)
        yield from reader
    except duckdb.Error as exc:
        raise ArchiveError(f"unreadable archive: {str(exc).splitlines()[0]}") from None


class ArchiveReader:
    """An archive folder opened for reading; ArchiveError when it is missing or holds no Parquet files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArchiveError(f"no archive at {self.root} (run `esper archive --out {self.root}` first)")
        self.manifest = load_manifest(self.root)
        if not any(self.root.glob("topic=*/run_id=*/*.parquet")):
            raise ArchiveError(f"archive {self.root} holds no Parquet files (run `esper archive --out {self.root}`)")

    def files(self, topic: str, run_folder_name: str = "*") -> list[Path]:
        return sorted(self.root.glob(f"topic={topic}/{run_folder_name}/*.parquet"))

    def select(self, run_id: str, *, from_offset: int | None = None, from_time: datetime | None = None) -> Selection:
        """The run's rows of run-scoped topics (from an offset / a time) and every row of the shared topics."""
        from services.nissa.sink import sink_tables
        from services.nissa.tables import dead_letters_table
        from services.oona.topic_registry import data_topics

        by_record = {t.record_name: t for t in sink_tables()}
        folder = run_folder(run_id.encode(), True)
        sources, ends, rows, run_rows = [], {}, 0, 0
        con = duckdb.connect()
        try:
            for spec in data_topics():
                files = self.files(spec.name, folder if spec.run_scoped else "*")
                if not files:
                    continue
                listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
                source = f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"
                where = ["TRUE"]
                if spec.run_scoped and from_offset is not None:
                    where.append(f"kafka_offset >= {int(from_offset)}")
                if spec.run_scoped and from_time is not None:
                    since = from_time.astimezone(UTC).isoformat()
                    where.append(f"kafka_timestamp >= '{since}'::TIMESTAMPTZ")
                table = dead_letters_table() if spec.raw else by_record[spec.record_name]
                try:
                    counts = con.execute(f"SELECT kafka_partition, max(kafka_offset), count(*) FROM {source} "
                                         f"WHERE {' AND '.join(where)} GROUP BY 1").fetchall()
                    verdicts = check_files(con, files, table)
                    columns = _typed_columns(con, source, table)
                except duckdb.Error as exc:
                    raise ArchiveError(f"unreadable archive file under {self.root}: "
                                       f"{str(exc).splitlines()[0]}") from None
                if not counts:
                    continue
                sources.append(Source(spec, table, source, " AND ".join(where), columns, verdicts))
                for partition, last, count in counts:
                    ends[(spec.name, partition)] = last + 1
                    rows += count
                    run_rows += count if spec.run_scoped else 0
        finally:
            con.close()
        return Selection(sources, rows, run_rows, ends)


# A column a file may hold narrower than the table: an older schema version's type, promoted since (Avro).
_WIDENED = {("INTEGER", "BIGINT"), ("FLOAT", "DOUBLE")}


def check_files(con: duckdb.DuckDBPyConnection, files: list[Path], table: Table) -> bool:
    """Refuse (ArchiveError, one line) a file that is not an archive file of ``table``: a raw column or
    ``decoded`` missing or of another type, or a column of the table of another type than the table's (or a
    narrower one an older schema version had). Only the files' footers are read, and each distinct schema
    is described once. Returns whether every file carries the contract's verdict (``VERDICT``)."""
    listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    representatives = con.execute(
        "SELECT min(file_name) FROM (SELECT file_name, string_agg(part, ',' ORDER BY part) AS signature FROM ("
        "SELECT file_name, concat_ws(':', name, type, converted_type, logical_type, num_children) AS part "
        f"FROM parquet_schema([{listed}])) GROUP BY file_name) GROUP BY signature").fetchall()
    expected = _expected_types(con, table)
    verdicts = True
    for path in sorted(file for (file,) in representatives):
        quoted = path.replace("'", "''")
        found = {name: kind for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{quoted}')"
                                                               ).fetchall()}
        for name, kind in expected.items():
            have = found.get(name)
            if have is None and (name in ARCHIVE_COLUMNS or name == VERDICT):
                if name == VERDICT:
                    verdicts = False
                    continue
                raise ArchiveError(f"{path} is not an archive file of {table.name}: it has no column {name}")
            if have is not None and have != kind and (have, kind) not in _WIDENED:
                raise ArchiveError(f"{path} is not an archive file of {table.name}: column {name} is {have}, "
                                   f"the table's is {kind}")
    return verdicts


def _expected_types(con: duckdb.DuckDBPyConnection, table: Table) -> dict[str, str]:
    """Every column an archive file of ``table`` may hold, with its type as DuckDB names it."""
    empty = pa.schema([*[f for f in table.arrow_schema if f.name not in ("kafka_partition", "kafka_offset")],
                       pa.field("decoded", pa.bool_()), pa.field(VERDICT, pa.string()), *RAW_FIELDS]).empty_table()
    con.register("_nissa_archive_columns", empty)
    try:
        return {name: kind for name, kind, *_ in con.execute("DESCRIBE _nissa_archive_columns").fetchall()}
    finally:
        con.unregister("_nissa_archive_columns")


def _typed_columns(con: duckdb.DuckDBPyConnection, source: str, table: Table) -> str:
    """``table``'s columns as SQL over ``source``; a column no archived file has (a schema version added it
    after they were written) is its default."""
    archived = _archived_columns(con, source)
    return ", ".join(f'"{c.name}"' if c.name in archived else f'{_literal(c.default)}::{c.sql_type} AS "{c.name}"'
                     for c in table.columns)


def _archived_columns(con: duckdb.DuckDBPyConnection, source: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}


def _literal(value: object) -> str:
    """A column default as SQL: None, booleans, numbers, strings, empty lists and maps."""
    if value is None:
        return "NULL"
    if value == [] or value == {}:
        return "[]" if isinstance(value, list) else "MAP {}"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ArchiveError(f"no SQL literal for the column default {value!r}")


def archive_connection(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the sink's tables as views over the archive (empty tables where none)."""
    from services.nissa.sink import sink_tables
    from services.nissa.views import create_views
    from services.oona.topic_registry import data_topics

    reader = ArchiveReader(root)
    con = duckdb.connect()
    topics = {s.record_name: s.name for s in data_topics() if not s.raw}
    dlq = next(s.name for s in data_topics() if s.raw)
    for table in sink_tables():
        topic = topics.get(table.record_name, dlq)
        if reader.files(topic):
            pattern = str(reader.root / f"topic={topic}" / "*" / "*.parquet").replace("'", "''")
            source = f"read_parquet('{pattern}', hive_partitioning = false, union_by_name = true)"
            columns = _typed_columns(con, source, table)
            # Rows the contract rejected when archived are dead letters to the sink, not rows of its tables.
            passed = f" AND {VERDICT} IS NULL" if VERDICT in _archived_columns(con, source) else ""
            con.execute(f'CREATE VIEW "{table.name}" AS SELECT {columns} FROM {source} WHERE decoded{passed}')
        else:
            con.execute(table.ddl())
    create_views(con)
    return con


