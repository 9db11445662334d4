"""Nissa's DuckDB tables are derived from the committed Avro schemas (no broker)."""

from __future__ import annotations

from datetime import UTC

import duckdb
import pyarrow as pa
import pytest

from services.core.errors import SchemaError
from services.nissa.tables import (
    KAFKA_COLUMNS,
    arrow_batch,
    columns_of,
    dead_letters_table,
    snake_case,
    table_for,
)
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import avro_topics, topic_spec

STORE = SchemaStore()


def types_of(name: str) -> dict[str, str]:
    table = table_for(topic_spec(name), STORE)
    return {c.name: c.sql_type for c in table.columns}


def test_one_table_per_record_named_after_the_payload():
    names = [table_for(spec, STORE).name for spec in avro_topics()]
    assert len(set(names)) == len(names)
    assert "health_signal" in names and "training_session_event" in names and "compiled_kernel" in names
    assert snake_case("KernelCharacterized") == "kernel_characterized"


def test_envelope_then_flattened_payload_then_kafka_coordinates():
    table = table_for(topic_spec("telemetry.seed.health"), STORE)
    names = table.column_names
    assert names[:7] == ["event_id", "sender_id", "timestamp", "trace_id", "topic", "run_id", "schema_version"]
    assert names[-2:] == [name for name, _, _ in KAFKA_COLUMNS]
    types = types_of("telemetry.seed.health")
    assert types["timestamp"] == "TIMESTAMPTZ" and types["payload_timestamp"] == "TIMESTAMPTZ"  # collision renamed
    assert types["layer_id"] == "BIGINT" and types["health_score"] == "DOUBLE"
    assert types["is_ready_for_transition"] == "BOOLEAN" and types["layer_name"] == "VARCHAR"
    assert types["kafka_partition"] == "INTEGER" and types["kafka_offset"] == "BIGINT"


def test_nested_records_are_flattened_and_collections_are_typed():
    epoch = types_of("system.events.epoch")
    assert epoch["state_epoch"] == "BIGINT" and epoch["state_timestamp"] == "TIMESTAMPTZ"
    ready = types_of("compilation.kernel.ready")  # a nullable record: flattened, every column nullable
    assert ready["kernel_kernel_id"] == "VARCHAR" and ready["kernel_input_shape"] == "BIGINT[]"
    assert ready["kernel_performance_profile"] == "MAP(VARCHAR, DOUBLE)" and ready["outcome"] == "VARCHAR"
    decision = types_of("control.tamiyo.decisions")
    assert decision["features"] == "MAP(VARCHAR, DOUBLE)" and decision["adaptation_type"] == "VARCHAR"
    transition = types_of("lifecycle.seed.transitions")
    assert transition["gates"] == 'STRUCT("name" VARCHAR, "passed" BOOLEAN, "value" DOUBLE, "threshold" DOUBLE)[]'
    assert types_of("library.kernels")["artifact"] == "BLOB"


def test_defaults_come_from_the_reader_schema():
    table = table_for(topic_spec("telemetry.seed.health"), STORE)
    defaults = {c.name: c.default for c in table.columns}
    assert defaults["health_score"] == 1.0 and defaults["total_seeds"] == 1 and defaults["trace_id"] is None


def test_dead_letters_table_mirrors_the_dead_letter_contract():
    table = dead_letters_table()
    types = {c.name: c.sql_type for c in table.columns}
    assert types["source_topic"] == "VARCHAR" and types["original_value"] == "BLOB"
    assert types["failed_at"] == "TIMESTAMPTZ" and types["origin"] == "VARCHAR"


@pytest.mark.parametrize("spec", avro_topics(), ids=lambda s: s.name)
def test_ddl_runs_and_the_arrow_schema_loads_into_it(spec):
    table = table_for(spec, STORE)
    con = duckdb.connect()
    con.execute(table.ddl())
    empty = arrow_batch(table, [])
    assert empty.num_rows == 0 and empty.schema == table.arrow_schema
    con.register("batch", empty)
    con.execute(f'INSERT INTO "{table.name}" SELECT * FROM batch')
    described = {row[0]: row[1] for row in con.execute(f'DESCRIBE "{table.name}"').fetchall()}
    assert list(described) == table.column_names
    assert described["timestamp"] == "TIMESTAMP WITH TIME ZONE"


def test_unsafe_names_never_reach_sql():
    schema = {"type": "record", "name": "esper.BadMessage",
              "fields": [{"name": "payload", "type": {"type": "record", "name": "esper.Bad",
                                                      "fields": [{"name": "x; DROP TABLE y", "type": "long"}]}}]}
    with pytest.raises(SchemaError, match="safe SQL identifier"):
        columns_of(schema)


def test_arrow_batch_builds_typed_columns_from_rows():
    table = dead_letters_table()
    from datetime import datetime

    row = ("t", 0, 5, "bad", "DecodeError", "nissa", b"k", b"v", datetime(2026, 1, 1, tzinfo=UTC),
           "nissa", 0, 5)
    batch = arrow_batch(table, [row, row])
    assert batch.num_rows == 2 and batch.schema.field("failed_at").type == pa.timestamp("us", tz="UTC")
