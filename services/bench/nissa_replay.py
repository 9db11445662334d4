"""Nissa replay benchmark: one recorded run of N HealthSignals -> a fresh DuckDB file, from Kafka and from the archive.

For each size (100k and 1M events; ``ESPER_BENCH_REPLAY_SIZES=20000,200000`` picks others) N
HealthSignals of one run (``OonaProducer.publish_many``) are produced to a fresh topic prefix (one
partition per topic), plus a few hundred of another run that the replay must leave out; then

* ``replay_from_kafka`` rebuilds the run into a fresh DuckDB file, timed from the call (offset
  lookups, schema, scan, decode, insert) to the closed file;
* the prefix is archived (``esper archive``, untimed) and ``replay_from_archive`` rebuilds the run
  from the Parquet files alone (DuckDB copies the archived typed columns itself, ``archive_copy.py``),
  timed the same way.

Row counts are checked each time. Baseline, measured in the same run on a sample: read +
``codec.decode`` + one INSERT per row (``nissa_ingest``'s naive sink), scaled to events/s. Ceilings,
at the largest size: a raw ``consume(1000)`` of the topic with the sink's consumer settings (all of
it: the other run's events too), and one DuckDB insert of the run's rows as a pre-built Arrow table; for the
archive, DuckDB's bare ``INSERT ... SELECT ... FROM read_parquet(...)`` of the run's files (no checks).

    esper bench --only replay
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb

from services.bench.bus_throughput import telemetry_batch
from services.bench.ceilings import (
    CONSUME_CEILING,
    INSERT_CEILING,
    PARQUET_CEILING,
    arrow_insert_rate,
    consume_rate,
    parquet_copy_rate,
    stored_rows,
)
from services.bench.nissa_ingest import naive_insert_rate  # the one naive baseline, shared with the ingest bench
from services.bench.profiling import own_path
from services.bench.results import BenchResult, Ceiling
from services.bench.start_up_curves import Point, exponent
from services.nissa.archive import archive_log
from services.nissa.replay import ReplayResult, replay_from_archive, replay_from_kafka
from services.nissa.sink import SINK_CONSUMER_CONFIG
from services.nissa.tables import table_for
from services.oona.admin import delete_topics, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec

TARGET_EVENTS_PER_S = 200_000  # 1M events in 5 s
ARCHIVE_TARGET_EVENTS_PER_S = 1_000_000  # 1M events in 1 s
RUN_ID = "bench-run-0"
OTHER_RUN_EVENTS = 500
SIZES: tuple[int, ...] = (100_000, 1_000_000)
SIZES_VARIABLE = "ESPER_BENCH_REPLAY_SIZES"  # comma-separated run lengths, instead of SIZES


@dataclasses.dataclass
class SizeTimings:
    events: int
    kafka: Point
    kafka_cpu_s: float
    archive: Point
    archive_cpu_s: float
    naive: float = 0.0
    consume_ceiling: float = 0.0
    insert_ceiling: float = 0.0
    parquet_ceiling: float = 0.0


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """The run lengths from ``ESPER_BENCH_REPLAY_SIZES`` ("100000,1000000"); SIZES when unset."""
    if not text or not text.strip():
        return SIZES
    sizes = tuple(sorted({int(part) for part in text.replace("_", "").split(",") if part.strip()}))
    if not sizes or sizes[0] <= 0:
        raise ValueError(f"{SIZES_VARIABLE}={text!r}: positive sizes are needed")
    return sizes


def _timed(replay: Callable[[], ReplayResult], db: Path, events: int, part: str) -> tuple[Point, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    with own_path(part):
        replay()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT count(*) FROM health_signal WHERE run_id = ?", [RUN_ID]).fetchall()[0][0]
        others = con.execute("SELECT count(*) FROM health_signal WHERE run_id <> ?", [RUN_ID]).fetchall()[0][0]
    if stored != events or others:
        raise RuntimeError(f"replay bench ({db.name}): {stored} rows of the run ({events} produced), "
                           f"{others} of others")
    return Point(events, seconds), cpu_seconds


def measure_size(settings: KafkaSettings, events: int, ceilings: bool) -> SizeTimings:
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    # One partition per topic: a run lives on one partition anyway, and the baseline reads partition 0 (the
    # settings' partition counts too: ensure_topics sizes run and work topics by them, e.g. 3 on a 3-node cluster).
    kafka = settings.model_copy(update={"topic_prefix": prefix, "run_partitions": 1, "work_partitions": 1})
    specs = [dataclasses.replace(s, partitions=1) for s in all_topics(prefix)]
    ensure_topics(kafka, specs)
    spec = topic_spec("telemetry.seed.health", prefix)
    codec = SingleObjectCodec()
    producer = OonaProducer(kafka, codec)
    for first in range(0, events, 50_000):
        producer.publish_many(spec, telemetry_batch(spec, min(50_000, events - first), runs=1))
    other = telemetry_batch(spec, OTHER_RUN_EVENTS, runs=1)
    producer.publish_many(spec, [m.model_copy(update={"run_id": "bench-other"}) for m in other])
    producer.flush()
    producer.close()
    try:
        with tempfile.TemporaryDirectory(prefix="nissa-replay-bench-") as tmp:
            db = Path(tmp) / "replay.duckdb"
            kafka_point, kafka_cpu = _timed(lambda: replay_from_kafka(kafka, RUN_ID, db), db, events, "kafka")
            archive = Path(tmp) / "archive"
            archive_log(kafka, archive)
            from_archive = Path(tmp) / "from-archive.duckdb"
            archive_point, archive_cpu = _timed(lambda: replay_from_archive(archive, RUN_ID, from_archive),
                                                from_archive, events, "archive")
            timings = SizeTimings(events, kafka_point, kafka_cpu, archive_point, archive_cpu)
            if ceilings:
                timings.naive = naive_insert_rate(kafka, spec, codec, Path(tmp) / "naive.duckdb")
                timings.consume_ceiling = consume_rate(kafka, [spec.name], events + OTHER_RUN_EVENTS,
                                                       SINK_CONSUMER_CONFIG)
                table = table_for(spec, codec.store)
                timings.insert_ceiling = arrow_insert_rate(table, stored_rows(db, table), Path(tmp) / "ceiling.duckdb")
                files = sorted(archive.glob(f"topic=telemetry.seed.health/run_id={RUN_ID}/*.parquet"))
                timings.parquet_ceiling = parquet_copy_rate(table, files, Path(tmp) / "parquet-ceiling.duckdb")
    finally:
        delete_topics(kafka, [s.name for s in specs])
    return timings


def _curve(label: str, points: list[tuple[Point, float]]) -> dict[str, float | int | str]:
    details: dict[str, float | int | str] = {}
    for point, cpu in points:
        details[f"{label}seconds_at_{point.events}"] = round(point.seconds, 3)
        details[f"{label}cpu_seconds_at_{point.events}"] = round(cpu, 3)
        details[f"{label}seconds_for_1M_at_this_rate_{point.events}"] = round(
            1_000_000 * point.seconds / point.events, 2)
        details[f"{label}events_per_cpu_second_at_{point.events}"] = round(point.events / cpu) if cpu > 0 else 0
    if len(points) > 1:
        details[f"{label}exponent"] = round(exponent(points[0][0], points[-1][0]), 3)
    return details


def bench_replay(settings: KafkaSettings, sizes: tuple[int, ...] | None = None) -> list[BenchResult]:
    sizes = tuple(sorted(sizes or parse_sizes(os.environ.get(SIZES_VARIABLE))))
    timings = [measure_size(settings, n, ceilings=n == sizes[-1]) for n in sizes]
    largest = timings[-1]
    kafka = _curve("", [(t.kafka, t.kafka_cpu_s) for t in timings])
    archive = _curve("", [(t.archive, t.archive_cpu_s) for t in timings])
    return [
        BenchResult(f"Kafka -> fresh DuckDB replay of one run ({largest.events:,} events)", "events/s",
                    largest.kafka.rate, "decode + row-by-row INSERT", largest.naive, target=TARGET_EVENTS_PER_S,
                    ceilings=[Ceiling(CONSUME_CEILING, largest.consume_ceiling),
                              Ceiling(INSERT_CEILING, largest.insert_ceiling)],
                    details={"events": largest.events} | kafka),
        BenchResult(f"Parquet archive -> fresh DuckDB replay of one run ({largest.events:,} events)", "events/s",
                    largest.archive.rate, "replay from Kafka", largest.kafka.rate,
                    target=ARCHIVE_TARGET_EVENTS_PER_S,
                    ceilings=[Ceiling(PARQUET_CEILING, largest.parquet_ceiling),
                              Ceiling(INSERT_CEILING, largest.insert_ceiling)],
                    details={"events": largest.events} | archive),
    ]
