"""Ceilings: the physical limit of the same client on the same machine, measured beside each figure.

Each is the figure's work with what Esper adds taken out, through the same confluent-kafka
client and settings (``services.oona.clients``), so that a figure can be read as a fraction
of what the machine allows at that moment:

    produce_rate(...)       pre-encoded values through a producer with the services' settings
                            (idempotent, acks=all, lz4): ``produce`` in a loop and one flush,
                            the fewest Python calls librdkafka takes from Python
    consume_rate(...)       raw ``consume(num_messages=1000)`` of every partition from its
                            beginning, no decoding, timed from ``assign``
    arrow_insert_rate(...)  one DuckDB ``INSERT ... SELECT`` of a pre-built Arrow table into a
                            fresh file: what storing the rows costs once they are columns
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
PRODUCE_CEILING = "pre-encoded produce (confluent-kafka, same settings)"
CONSUME_CEILING = f"raw consume({CONSUME_BATCH}), no decoding"
INSERT_CEILING = "DuckDB insert of a pre-built Arrow table"


class CeilingProducer:
    """A producer with the services' settings that sends bytes already encoded, one ``produce`` call each."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = clients.producer(settings, PRODUCER_DEFAULTS)
        self._failures: list[str] = []

    def _on_delivery(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:  # with delivery.report.only.error, the only reports that come
            self._failures.append(error.str())

    def rate(self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None]) -> float:
        """Messages/s of producing every value with its key and flushing once."""
        produce, on_delivery = self._producer.produce, self._on_delivery
        start = time.perf_counter()
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:  # local queue full: let librdkafka drain it, then once more
                self._producer.poll(0.05)
                produce(topic, value, key, on_delivery=on_delivery)
        left = self._producer.flush(300)
        seconds = time.perf_counter() - start
        if left or self._failures:
            raise RuntimeError(f"ceiling produce to {topic}: {left} undelivered, failures {self._failures[:3]}")
        return len(values) / seconds if seconds > 0 else 0.0


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


def stored_rows(db: Path, table: Table) -> pa.Table:
    """The rows a run stored in ``table``, as Arrow: the pre-built table the insert ceiling inserts again."""
    columns = ", ".join(f'"{name}"' for name in table.column_names)
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql(f'SELECT {columns} FROM "{table.name}"').to_arrow_table()
