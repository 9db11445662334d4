"""DuckDB tables derived from the committed Avro schemas: one table per topic record.

Column rules (one table per record type, named after the payload in snake_case,
e.g. ``HealthSignalMessage`` -> ``health_signal``):

* envelope fields keep their names (``event_id``, ``sender_id``, ``timestamp``, ``trace_id``,
  ``topic``, ``run_id``, ``schema_version``);
* payload fields are flattened: ``payload.epoch`` -> ``epoch``; nested records (also
  nullable ones, ``[null, record]``) are flattened with ``_``: ``payload.state.epoch`` ->
  ``state_epoch``. A payload column whose name collides with an envelope column gets the
  prefix ``payload_`` (``HealthSignal.timestamp`` -> ``payload_timestamp``);
* types: long BIGINT, int INTEGER, double DOUBLE, float FLOAT, boolean BOOLEAN, string and
  enum VARCHAR, bytes BLOB, timestamp-micros TIMESTAMPTZ; arrays are LISTs (``T[]``), maps
  ``MAP(VARCHAR, T)``, records inside arrays or maps ``STRUCT(...)``;
* every table ends with ``kafka_partition`` and ``kafka_offset``: where the event was read.

The ``dead_letters`` table is derived the same way from the ``DeadLetter`` contract (the
DLQ carries raw bytes with headers, not Avro) plus ``origin``: ``dlq`` for what other
consumers dead-lettered, ``nissa`` for what the sink itself could not decode.
Only names that match Avro's identifier rule ever reach SQL text. Walking the schemas (named
types, ``[null, X]`` unions, flattened records) is the Avro layer's (``services/oona/avro``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa

from contracts import DeadLetter
from services.core.errors import SchemaError
from services.oona.avro.schema_walk import NamedTypes, flattened_record, nullable_branch, safe_name
from services.oona.avro_mapping import model_to_avro
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import TopicSpec

_PRIMITIVES: dict[str, tuple[str, pa.DataType]] = {
    "long": ("BIGINT", pa.int64()),
    "int": ("INTEGER", pa.int32()),
    "double": ("DOUBLE", pa.float64()),
    "float": ("FLOAT", pa.float32()),
    "boolean": ("BOOLEAN", pa.bool_()),
    "string": ("VARCHAR", pa.string()),
    "bytes": ("BLOB", pa.binary()),
}
_TIMESTAMPS = {
    "timestamp-micros": ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    "timestamp-millis": ("TIMESTAMPTZ", pa.timestamp("ms", tz="UTC")),
}
ENVELOPE_FIELDS = ("event_id", "sender_id", "timestamp", "trace_id", "topic", "run_id", "schema_version")
KAFKA_COLUMNS = (("kafka_partition", "INTEGER", pa.int32()), ("kafka_offset", "BIGINT", pa.int64()))
DEAD_LETTERS = "dead_letters"


@dataclass(frozen=True)
class Column:
    """One DuckDB column: ``path`` is the field path in the Avro record (empty for Kafka columns)."""

    name: str
    path: tuple[str, ...]
    sql_type: str
    arrow_type: pa.DataType
    default: Any = None  # the value when a (historical) writer schema lacks the field


@dataclass(frozen=True)
class Table:
    """A DuckDB table; as a ``services.oona.avro.ColumnLayout`` it is what the Avro decoders fill."""

    name: str
    record_name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    def ddl(self) -> str:
        cols = ",\n  ".join(f'"{c.name}" {c.sql_type}' for c in self.columns)
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" (\n  {cols}\n)'


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def table_name(spec: TopicSpec) -> str:
    return snake_case(spec.payload.__name__)


def column_type(schema: Any, names: NamedTypes) -> tuple[str, pa.DataType]:
    """(DuckDB type, Arrow type) of a non-flattened value."""
    schema, _ = nullable_branch(schema)
    schema = names.resolve(schema)
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            raise SchemaError(f"unsupported Avro type {schema!r}")
        return _PRIMITIVES[schema]
    kind = schema["type"]
    if schema.get("logicalType") in _TIMESTAMPS:
        return _TIMESTAMPS[schema["logicalType"]]
    if kind == "enum":
        return _PRIMITIVES["string"]
    if kind == "array":
        sql, arrow = column_type(schema["items"], names)
        return f"{sql}[]", pa.list_(arrow)
    if kind == "map":
        sql, arrow = column_type(schema["values"], names)
        return f"MAP(VARCHAR, {sql})", pa.map_(pa.string(), arrow)
    if kind == "record":
        parts = [(safe_name(f["name"]), *column_type(f["type"], names)) for f in schema["fields"]]
        sql = ", ".join(f'"{n}" {s}' for n, s, _ in parts)
        return f"STRUCT({sql})", pa.struct([pa.field(n, a) for n, _, a in parts])
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise SchemaError(f"unsupported Avro type {kind!r}")


def avro_default(schema: Any, value: Any, names: NamedTypes) -> Any:
    """An Avro JSON default as the value a column holds (bytes defaults are latin-1 strings)."""
    if value is None:
        return None
    schema, _ = nullable_branch(schema)
    schema = names.resolve(schema)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "bytes":
        return value.encode("latin-1")
    return value


_NO_DEFAULT = object()


def _columns(record: dict, path: tuple[str, ...], parent_default: Any, names: NamedTypes) -> list[Column]:
    """Leaf columns of ``record``; ``parent_default`` is the default of the field holding it, if it has one
    (then it decides every sub-column's default: a nullable record defaulting to null nulls them all)."""
    out: list[Column] = []
    for field in record["fields"]:
        fname = safe_name(field["name"])
        if parent_default is _NO_DEFAULT:
            default = field.get("default", _NO_DEFAULT)
        else:
            default = parent_default.get(fname) if isinstance(parent_default, dict) else None
        nested = flattened_record(field["type"], names)
        if nested is not None:
            out.extend(_columns(nested, path + (fname,), default, names))
            continue
        sql, arrow = column_type(field["type"], names)
        value = None if default is _NO_DEFAULT else avro_default(field["type"], default, names)
        out.append(Column("_".join(path[1:] + (fname,)), path + (fname,), sql, arrow, value))
    return out


def columns_of(schema: dict) -> tuple[Column, ...]:
    """Flattened columns of a ``<Payload>Message`` schema, then the Kafka coordinates."""
    names = NamedTypes(schema)
    columns = []
    for column in _columns(schema, (), _NO_DEFAULT, names):
        if column.path[0] == "payload" and column.name in ENVELOPE_FIELDS:
            column = Column("payload_" + column.name, column.path, column.sql_type, column.arrow_type, column.default)
        elif column.path[0] != "payload":
            column = Column(column.path[0], column.path, column.sql_type, column.arrow_type, column.default)
        columns.append(column)
    columns.extend(Column(name, (), sql, arrow) for name, sql, arrow in KAFKA_COLUMNS)
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise SchemaError(f"two columns named {column.name!r} in {schema['name']}")
        seen.add(column.name)
    return tuple(columns)


def table_for(spec: TopicSpec, store: SchemaStore) -> Table:
    """The table of an Avro topic, from its current (reader) schema."""
    return Table(table_name(spec), spec.record_name, columns_of(store.raw(spec.record_name)))


@cache
def dead_letters_table() -> Table:
    """``dead_letters``: the DeadLetter contract's fields, ``origin``, then the Kafka coordinates."""
    schema = model_to_avro(DeadLetter)
    names = NamedTypes(schema)
    columns = [Column(safe_name(f["name"]), (f["name"],), *column_type(f["type"], names)) for f in schema["fields"]]
    columns.append(Column("origin", ("origin",), "VARCHAR", pa.string()))
    columns.extend(Column(name, (), sql, arrow) for name, sql, arrow in KAFKA_COLUMNS)
    return Table(DEAD_LETTERS, "DeadLetter", tuple(columns))


def arrow_batch(table: Table, rows: list[tuple]) -> pa.Table:
    """Rows (tuples in column order) -> one Arrow table, column by column."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in table.columns]
    arrays = [pa.array(values, type=c.arrow_type) for values, c in zip(columns, table.columns, strict=True)]
    return pa.Table.from_arrays(arrays, schema=table.arrow_schema)


def row_from_record(table: Table, record: dict, partition: int, offset: int) -> tuple:
    """The row of a decoded record (a dict as fastavro returns it): the reference for the fast decoder."""
    row = []
    for column in table.columns[: -len(KAFKA_COLUMNS)]:
        value: Any = record
        for key in column.path:
            value = value.get(key) if isinstance(value, dict) else None
        row.append(value)
    return (*row, partition, offset)
