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
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import duckdb

from services.bench.bus_throughput import telemetry_batch
from services.bench.ceilings import CONSUME_CEILING, INSERT_CEILING, arrow_insert_rate, consume_rate, stored_rows
from services.bench.results import BenchResult, Ceiling
from services.nissa.sink import SINK_CONSUMER_CONFIG, NissaSink
from services.nissa.tables import row_from_record, table_for
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


def bench_ingest(settings: KafkaSettings, events: int = 200_000) -> BenchResult:
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
    finally:
        delete_topics(kafka, [s.name for s in specs])
    return BenchResult("Kafka -> DuckDB ingest (Nissa sink)", "events/s", events / seconds,
                       "decode + row-by-row INSERT", naive, target=TARGET_EVENTS_PER_S,
                       ceilings=[Ceiling(CONSUME_CEILING, consume_ceiling, CONSUME_MIN_FRACTION),
                                 Ceiling(INSERT_CEILING, insert_ceiling)],
                       details={"events": events, "read": read, "seconds": round(seconds, 3),
                                "cpu_seconds": round(cpu_seconds, 3),
                                "events_per_cpu_second": round(events / cpu_seconds) if cpu_seconds > 0 else 0})


def naive_insert_rate(kafka: KafkaSettings, spec, codec: SingleObjectCodec, db: Path) -> float:
    """Events/s of read + ``codec.decode`` + one INSERT per row, on the first BASELINE_EVENTS of partition 0."""
    table = table_for(spec, codec.store)
    con = duckdb.connect(str(db))
    con.execute(table.ddl())
    insert = f'INSERT INTO "{table.name}" VALUES ({", ".join("?" for _ in table.columns)})'
    start = time.perf_counter()
    raw = read_range(kafka, {(spec.name, 0): (0, BASELINE_EVENTS)})
    rows = [row_from_record(table, message_to_record(codec.decode(spec, m.value())), *position_of(m)[1:])
            for m in raw]
    con.executemany(insert, rows)
    seconds = time.perf_counter() - start
    con.close()
    return len(rows) / seconds if seconds > 0 else 0.0
