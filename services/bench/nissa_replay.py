"""Nissa replay benchmark: one recorded run of N HealthSignals on a real broker -> a fresh DuckDB file.

N HealthSignals of one run (``OonaProducer.publish_many``) are produced to a fresh topic
prefix (one partition per topic), plus a few hundred of another run that the replay must leave out; then
``replay_from_kafka`` rebuilds the run into a fresh DuckDB file, timed from the call (offset
lookups, schema, scan, decode, insert) to the closed file, and the row count is checked.
Baseline, measured in the same run on a sample: read + ``codec.decode`` + one INSERT per
row (``nissa_ingest``'s naive sink), scaled to events/s. Ceilings, in the same run: a raw
``consume(1000)`` of the topic with the sink's consumer settings (all of it: the other run's
events too), and one DuckDB insert of the run's rows as a pre-built Arrow table.

    esper bench --only replay [--events N]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

from services.bench.bus_throughput import telemetry_batch
from services.bench.ceilings import CONSUME_CEILING, INSERT_CEILING, arrow_insert_rate, consume_rate, stored_rows
from services.bench.nissa_ingest import naive_insert_rate  # the one naive baseline, shared with the ingest bench
from services.bench.results import BenchResult, Ceiling
from services.nissa.replay import replay_from_kafka
from services.nissa.sink import SINK_CONSUMER_CONFIG
from services.nissa.tables import table_for
from services.oona.admin import delete_topics, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec

TARGET_EVENTS_PER_S = 200_000  # 1M events in 5 s
RUN_ID = "bench-run-0"
OTHER_RUN_EVENTS = 500


def bench_replay(settings: KafkaSettings, events: int = 1_000_000) -> BenchResult:
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    kafka = settings.model_copy(update={"topic_prefix": prefix})
    # One partition per topic: a run lives on one partition anyway, and the baseline reads partition 0.
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
            start, cpu_start = time.perf_counter(), time.process_time()
            result = replay_from_kafka(kafka, RUN_ID, db)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            with duckdb.connect(str(db), read_only=True) as con:
                stored = con.execute("SELECT count(*) FROM health_signal WHERE run_id = ?", [RUN_ID]).fetchall()[0][0]
                others = con.execute("SELECT count(*) FROM health_signal WHERE run_id <> ?", [RUN_ID]).fetchall()[0][0]
            if stored != events or others:
                raise RuntimeError(f"replay bench: {stored} rows of the run ({events} produced), {others} of others")
            naive = naive_insert_rate(kafka, spec, codec, Path(tmp) / "naive.duckdb")
            consume_ceiling = consume_rate(kafka, [spec.name], events + OTHER_RUN_EVENTS, SINK_CONSUMER_CONFIG)
            table = table_for(spec, codec.store)
            insert_ceiling = arrow_insert_rate(table, stored_rows(db, table), Path(tmp) / "ceiling.duckdb")
    finally:
        delete_topics(kafka, [s.name for s in specs])
    return BenchResult("Kafka -> fresh DuckDB replay of one run", "events/s", events / seconds,
                       "decode + row-by-row INSERT", naive, target=TARGET_EVENTS_PER_S,
                       ceilings=[Ceiling(CONSUME_CEILING, consume_ceiling), Ceiling(INSERT_CEILING, insert_ceiling)],
                       details={"events": events, "seconds": round(seconds, 3), "read": result.events,
                                "cpu_seconds": round(cpu_seconds, 3),
                                "seconds_for_1M_at_this_rate": round(1_000_000 * seconds / events, 2)})
