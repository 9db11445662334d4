"""Nissa ingest benchmark: HealthSignals on a real broker -> the DuckDB file, through the sink.

N HealthSignals are produced (``OonaProducer.publish_many``) to a fresh topic prefix; the
sink then reads every topic of that prefix from the beginning into a fresh DuckDB file,
timed from ``start()`` (schema, offsets, assignment) to the last commit, and the row count
is checked. ``details`` also gives the CPU time of the whole process over that span (the
consumer's, DuckDB's and the committer's threads included): on a shared machine
``events_per_cpu_second`` says what the sink costs when the wall clock says mostly how busy
the neighbours were. Baseline, measured in the same run on a smaller sample: what a naive sink does,
``codec.decode`` (fastavro + contract validation) per event and one ``INSERT`` per row
through ``executemany``, scaled to events/s.

Ceilings, measured in the same run (``services.bench.ceilings``): a raw ``consume(1000)`` of the
same topic with the sink's consumer settings, no decoding (the issue's target: ingest at >= 40 %
of it), and one DuckDB insert of the same rows as a pre-built Arrow table into a fresh file.
Both leave out what the sink's timing includes besides (start-up, commits), so they bound it.

The scale curve (``bench_ingest_curve``, ``esper bench --only ingest``): the same events ingested again
by a fresh sink into a database that already holds 1M, then 10M rows of the same table (generated in
DuckDB SQL, event ids of their own; ``ESPER_BENCH_INGEST_SIZES=100000,1000000`` picks other sizes). Timed
from the first consume to the last commit (the sink's start, which loads every stored event id once,
is start-up: ``startup-curve``). Flat means the exponent log(t2/t1) / log(n2/n1) stays near 0: nothing
per event (an index probe, a dedup lookup) grows with the rows stored.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

from services.bench.bus_throughput import telemetry_batch
from services.bench.ceilings import CONSUME_CEILING, INSERT_CEILING, arrow_insert_rate, consume_rate, stored_rows
from services.bench.profiling import own_path
from services.bench.results import BenchResult, Ceiling
from services.bench.start_up_curves import Point, exponent
from services.nissa.sink import SINK_CONSUMER_CONFIG, NissaSink, sink_tables
from services.nissa.store import NissaStore
from services.nissa.tables import Table, row_from_record, table_for
from services.oona.admin import delete_topics, ensure_topics
from services.oona.codec import SingleObjectCodec, message_to_record
from services.oona.log_reader import read_range
from services.oona.messages import position_of
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec

BASELINE_EVENTS = 2000
TARGET_EVENTS_PER_S = 200_000
CONSUME_MIN_FRACTION = 0.40
CURVE_SIZES: tuple[int, ...] = (1_000_000, 10_000_000)
CURVE_SIZES_VARIABLE = "ESPER_BENCH_INGEST_SIZES"  # comma-separated rows already stored, instead of CURVE_SIZES


def bench_ingest(settings: KafkaSettings, events: int = 200_000, sizes: tuple[int, ...] | None = None
                 ) -> list[BenchResult]:
    """The ingest figure with its ceilings, then the scale curve over the same produced events."""
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    kafka = settings.model_copy(update={"topic_prefix": prefix})
    specs = all_topics(prefix)
    ensure_topics(kafka, specs)
    spec = topic_spec("telemetry.seed.health", prefix)
    codec = SingleObjectCodec()
    producer = OonaProducer(kafka, codec)
    messages = telemetry_batch(spec, events)
    for i in range(0, events, 10_000):
        producer.publish_many(spec, messages[i : i + 10_000])
    producer.flush()
    try:
        with tempfile.TemporaryDirectory(prefix="nissa-bench-") as tmp:
            db = Path(tmp) / "esper.duckdb"
            sink = NissaSink(kafka, db, hold_s=3600)
            start, cpu_start = time.perf_counter(), time.process_time()
            with own_path():
                sink.start()
                read = sink.run_until_caught_up(timeout_s=600)
                sink.close()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            with duckdb.connect(str(db), read_only=True) as con:
                stored = con.execute("SELECT count(*) FROM health_signal").fetchall()[0][0]
            if stored != events:
                raise RuntimeError(f"nissa bench: {stored} rows in DuckDB for {events} events produced")
            naive = naive_insert_rate(kafka, spec, codec, Path(tmp) / "naive.duckdb")
            consume_ceiling = consume_rate(kafka, [spec.name], events, SINK_CONSUMER_CONFIG)
            table = table_for(spec, codec.store)
            insert_ceiling = arrow_insert_rate(table, stored_rows(db, table), Path(tmp) / "ceiling.duckdb")
            points = [ingest_into_filled(kafka, table, Path(tmp) / f"filled-{n}.duckdb", n, events)
                      for n in sorted(sizes or parse_sizes(os.environ.get(CURVE_SIZES_VARIABLE)))]
    finally:
        delete_topics(kafka, [s.name for s in specs])
    return [BenchResult("Kafka -> DuckDB ingest (Nissa sink)", "events/s", events / seconds,
                       "decode + row-by-row INSERT", naive, target=TARGET_EVENTS_PER_S,
                       ceilings=[Ceiling(CONSUME_CEILING, consume_ceiling, CONSUME_MIN_FRACTION),
                                 Ceiling(INSERT_CEILING, insert_ceiling)],
                       details={"events": events, "read": read, "seconds": round(seconds, 3),
                                "cpu_seconds": round(cpu_seconds, 3),
                                "events_per_cpu_second": round(events / cpu_seconds) if cpu_seconds > 0 else 0}),
            curve_result(events, points)]


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """The curve's stored-row counts from ``ESPER_BENCH_INGEST_SIZES`` ("1000000,10000000"); CURVE_SIZES when unset."""
    if not text or not text.strip():
        return CURVE_SIZES
    sizes = tuple(sorted({int(part) for part in text.replace("_", "").split(",") if part.strip()}))
    if len(sizes) < 2 or sizes[0] <= 0:
        raise ValueError(f"{CURVE_SIZES_VARIABLE}={text!r}: at least two positive sizes are needed")
    return sizes


def fill_sql(table: Table, rows: int) -> str:
    """An INSERT of ``rows`` generated rows into ``table``: distinct event ids ('filled-<i>'), plain values."""
    def value(name: str, sql_type: str) -> str:
        if name == "event_id":
            return "'filled-' || i"
        if name == "kafka_offset":
            return "i"
        if sql_type == "VARCHAR":
            return "'filled-' || (i % 1000)"
        if sql_type in ("BIGINT", "INTEGER"):
            return f"(i % 1000)::{sql_type}"
        if sql_type in ("DOUBLE", "FLOAT"):
            return f"(i * 0.001)::{sql_type}"
        if sql_type == "BOOLEAN":
            return "i % 2 = 0"
        if sql_type == "TIMESTAMPTZ":
            return "to_timestamp(1700000000 + i)"
        return f"NULL::{sql_type}"
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    values = ", ".join(value(c.name, c.sql_type) for c in table.columns)
    return f'INSERT INTO "{table.name}" ({columns}) SELECT {values} FROM range({rows}) AS t(i)'


def ingest_into_filled(kafka: KafkaSettings, table: Table, db: Path, stored: int, events: int) -> tuple[Point, float]:
    """(stored rows, seconds to ingest ``events``), and the CPU seconds, for a database already holding ``stored``."""
    store = NissaStore(db, sink_tables())
    store.create_schema()
    store.close()
    with duckdb.connect(str(db)) as con:
        con.execute(fill_sql(table, stored))
    sink = NissaSink(kafka, db, hold_s=3600)
    sink.start()  # loads the stored event ids: start-up, not ingest
    start, cpu_start = time.perf_counter(), time.process_time()
    sink.run_until_caught_up(timeout_s=600)
    sink.flush(wait=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    sink.close()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(f'SELECT count(*) FROM "{table.name}"').fetchall()[0][0]
    db.unlink()
    if rows != stored + events:
        raise RuntimeError(f"ingest curve: {rows} rows after ingesting {events} into {stored}")
    return Point(stored, seconds), cpu_seconds


def curve_result(events: int, points: list[tuple[Point, float]]) -> BenchResult:
    """The rate at the largest size against the smallest (ratio 1.0: flat), exponents of wall and CPU time."""
    (small, small_cpu), (large, large_cpu) = points[0], points[-1]
    details: dict[str, float | int | str] = {"events": events}
    for point, cpu in points:
        details[f"events_per_s_with_{point.events}_stored"] = round(events / point.seconds)
        details[f"events_per_cpu_second_with_{point.events}_stored"] = round(events / cpu) if cpu > 0 else 0
    details["exponent"] = round(exponent(small, large), 3)
    if small_cpu > 0 and large_cpu > 0:
        details["cpu_exponent"] = round(exponent(Point(small.events, small_cpu), Point(large.events, large_cpu)), 3)
    return BenchResult(f"Nissa ingest with {large.events:,} rows stored", "events/s", events / large.seconds,
                       f"with {small.events:,} rows stored", events / small.seconds, details=details)


def naive_insert_rate(kafka: KafkaSettings, spec, codec: SingleObjectCodec, db: Path) -> float:
    """Events/s of read + ``codec.decode`` + one INSERT per row, on the first BASELINE_EVENTS of partition 0."""
    table = table_for(spec, codec.store)
    con = duckdb.connect(str(db))
    con.execute(table.ddl())
    insert = f'INSERT INTO "{table.name}" VALUES ({", ".join("?" for _ in table.columns)})'
    start = time.perf_counter()
    # As long as the benches' own reads may take: on a loaded machine 60 s was not always enough.
    raw = read_range(kafka, {(spec.name, 0): (0, BASELINE_EVENTS)}, timeout_s=300)
    rows = [row_from_record(table, message_to_record(codec.decode(spec, m.value())), *position_of(m)[1:])
            for m in raw]
    con.executemany(insert, rows)
    seconds = time.perf_counter() - start
    con.close()
    return len(rows) / seconds if seconds > 0 else 0.0
