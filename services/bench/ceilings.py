"""Ceilings: the physical limit of the same client on the same machine, measured beside each figure.

Each is the figure's work with what Esper adds taken out, through the same confluent-kafka
client and settings (``services.oona.clients``), so that a figure can be read as a fraction
of what the machine allows at that moment:

    CeilingProducer         pre-encoded values through a producer with the services' settings
                            (idempotent, acks=all, lz4) and one flush, by librdkafka's two ways
                            in from Python: ``produce`` in a loop (the delivery callback set once
                            in the config) and ``produce_batch`` (a dict per message); a figure
                            is judged against the faster of the two in the same repeat
    consume_rate(...)       raw ``consume(num_messages=1000)`` of every partition from its
                            beginning, no decoding, timed from ``assign``
    arrow_insert_rate(...)  one DuckDB ``INSERT ... SELECT`` of a pre-built Arrow table into a
                            fresh file: what storing the rows costs once they are columns
    parquet_copy_rate(...)  one DuckDB ``INSERT ... SELECT ... FROM read_parquet(...)`` of archive
                            files' decoded rows into a fresh file: DuckDB's own copy, what a replay
                            from the archive does with every check taken out
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from services.nissa.tables import Table
from services.oona import clients
from services.oona.producer import PRODUCER_DEFAULTS
from services.oona.settings import KafkaSettings

CONSUME_BATCH = 1000
PRODUCE_CEILING = "pre-encoded produce (confluent-kafka, same settings; faster of produce loop, produce_batch)"
CONSUME_CEILING = f"raw consume({CONSUME_BATCH}), no decoding"
INSERT_CEILING = "DuckDB insert of a pre-built Arrow table"
PARQUET_CEILING = "DuckDB INSERT ... SELECT from the archive's Parquet files"


class CeilingProducer:
    """A producer with the services' settings that sends bytes already encoded."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._failures: list[str] = []
        self._producer = clients.producer(settings, PRODUCER_DEFAULTS, {"on_delivery": self._on_delivery})

    def _on_delivery(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:  # with delivery.report.only.error, the only reports that come
            self._failures.append(error.str())

    def rate(self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None]) -> float:
        """Messages/s of producing every value with its key, one ``produce`` call each, and flushing once."""
        produce = self._producer.produce
        start = time.perf_counter()
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:  # local queue full: let librdkafka drain it, then once more
                self._producer.poll(0.05)
                produce(topic, value, key)
        return self._flushed(topic, len(values), start)

    def batch_rate(self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None],
                   chunk: int = 10_000) -> float:
        """Messages/s of the same through ``produce_batch``, ``chunk`` a call (their dicts built in the time)."""
        start = time.perf_counter()
        for i in range(0, len(values), chunk):
            pending: list[dict[str, Any]] = [
                {"value": v, "key": k} for v, k in zip(values[i : i + chunk], keys[i : i + chunk], strict=True)]
            while pending:
                self._producer.produce_batch(topic, pending)
                refused = [(m, m.pop("_error")) for m in pending if "_error" in m]
                if any(error.code() != KafkaError._QUEUE_FULL for _, error in refused):
                    raise RuntimeError(f"ceiling produce_batch to {topic}: {refused[0][1].str()}")
                pending = [m for m, _ in refused]
                if pending:  # local queue full: let librdkafka drain it, then those again
                    self._producer.poll(0.05)
        return self._flushed(topic, len(values), start)

    def _flushed(self, topic: str, count: int, start: float) -> float:
        left = self._producer.flush(300)
        seconds = time.perf_counter() - start
        if left or self._failures:
            raise RuntimeError(f"ceiling produce to {topic}: {left} undelivered, failures {self._failures[:3]}")
        return count / seconds if seconds > 0 else 0.0


def consume_rate(settings: KafkaSettings, topics: list[str], expected: int, config: Mapping[str, Any],
                 timeout_s: float = 300.0) -> float:
    """Messages/s of reading ``expected`` messages of ``topics`` from the beginning, timed from ``assign``.

    Every partition is assigned at its beginning (no group to join, as the sink and replay do):
    the time covers the first fetches too, not only the messages already prefetched.
    """
    consumer = clients.consumer(settings, config, {
        "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=settings.connect_timeout_s).topics
        partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        got = 0
        deadline = time.monotonic() + timeout_s
        start = time.perf_counter()
        consumer.assign(partitions)
        while got < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"ceiling consume of {topics}: {got} of {expected} messages in {timeout_s:.0f} s")
            got += len(consumer.consume(num_messages=CONSUME_BATCH, timeout=1.0))
        seconds = time.perf_counter() - start
    finally:
        consumer.close()
    return got / seconds if seconds > 0 else 0.0


def arrow_insert_rate(table: Table, rows: pa.Table, db: Path) -> float:
    """Rows/s of one ``INSERT ... SELECT`` of ``rows`` into ``table`` in a fresh DuckDB file (autocommit)."""
    columns = ", ".join(f'"{name}"' for name in table.column_names)
    with duckdb.connect(str(db)) as con:
        con.execute(table.ddl())
        con.register("ceiling_rows", rows)
        start = time.perf_counter()
        con.execute(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM ceiling_rows')
        seconds = time.perf_counter() - start
        con.unregister("ceiling_rows")
        stored = con.execute(f'SELECT count(*) FROM "{table.name}"').fetchall()[0][0]
    if stored != rows.num_rows:
        raise RuntimeError(f"ceiling insert: {stored} rows stored of {rows.num_rows}")
    return rows.num_rows / seconds if seconds > 0 else 0.0


def parquet_copy_rate(table: Table, files: Sequence[Path], db: Path) -> float:
    """Rows/s of one ``INSERT ... SELECT`` of the decoded rows of archive ``files`` into ``table`` in a fresh
    DuckDB file (autocommit)."""
    columns = ", ".join(f'"{name}"' for name in table.column_names)
    listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    with duckdb.connect(str(db)) as con:
        con.execute(table.ddl())
        start = time.perf_counter()
        (stored,) = con.execute(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} '
                                f"FROM read_parquet([{listed}]) WHERE decoded").fetchall()[0]
        seconds = time.perf_counter() - start
    return stored / seconds if seconds > 0 else 0.0


def stored_rows(db: Path, table: Table) -> pa.Table:
    """The rows a run stored in ``table``, as Arrow: the pre-built table the insert ceiling inserts again."""
    columns = ", ".join(f'"{name}"' for name in table.column_names)
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql(f'SELECT {columns} FROM "{table.name}"').to_arrow_table()
