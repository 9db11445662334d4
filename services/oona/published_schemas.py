"""The schema log's records: a writer schema -> (key, value), and back, checked as untrusted data.

A producer publishes each writer schema before its first use (``schema_log.py``); a consumer
one version behind reads it back here. What comes off the bus is only data: it is parsed
(JSON, then fastavro's ``parse_schema``), never executed, and checked before anything else
sees it:

* bounded: at most ``MAX_PUBLISHED_SCHEMA_CHARS`` characters and ``MAX_NESTING`` levels of JSON
  (counted before ``json.loads``, so no input can exhaust the parser's recursion);
* every name (record, enum, fixed, namespace parts, fields, enum symbols) matches Avro's name
  rule ``[A-Za-z_][A-Za-z0-9_]*`` — the generated decoders (``avro/row_decoder.py``) splice
  field names into source, and only such identifiers can never be more than a dict key;
* only the types our decoders know (no ``fixed``), named types defined before use and never
  recursive (a recursive record would make the decoder generators recurse without end);
* the key is the CRC-64-AVRO fingerprint of the schema's parsing canonical form, recomputed
  here, and the record name is the schema's own.

Whether the schema is one this consumer may read (same record, readable by its reader schema)
is the schema store's question (``SchemaStore.writer``), asked with the reader at hand.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from contracts.published_schema import MAX_PUBLISHED_SCHEMA_CHARS, PublishedSchema
from services.core.errors import SchemaError
from services.oona.avro.schema_walk import PRIMITIVE_NAMES
from services.oona.schema_store import WriterSchema, parse_record_schema, schema_fingerprint

MAX_NESTING = 64  # JSON levels; our deepest committed schema has about a dozen
_ALLOWED_LOGICAL = {None, "timestamp-micros", "timestamp-millis"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def publication(record_name: str, version: int, schema: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of the schema-log record announcing ``schema`` (version ``version`` of ``record_name``)."""
    fingerprint = schema_fingerprint(schema).hex()
    record = PublishedSchema(fingerprint=fingerprint, record_name=record_name, version=version,
                             writer_schema=json.dumps(schema, separators=(",", ":")))
    return fingerprint.encode(), record.model_dump_json().encode()


def read_publication(key: bytes | None, value: bytes | None) -> WriterSchema:
    """The writer schema a schema-log record announces; SchemaError with the reason if it is not acceptable."""
    if value is None or key is None:
        raise SchemaError("schema-log record without key or value")
    if len(value) > 2 * MAX_PUBLISHED_SCHEMA_CHARS:
        raise SchemaError(f"schema-log record of {len(value)} bytes is too large")
    try:
        record = PublishedSchema.model_validate_json(value)
    except ValidationError as exc:
        raise SchemaError(f"not a schema-log record: {exc.errors()[0]['msg']}") from None
    if key != record.fingerprint.encode():
        raise SchemaError(f"schema-log key {key[:32]!r} is not the record's fingerprint {record.fingerprint}")
    schema = _load_bounded(record.writer_schema)
    check_schema_shape(schema)
    try:
        parsed = parse_record_schema(schema)
        fingerprint = schema_fingerprint(schema).hex()
    except Exception as exc:  # fastavro raises assorted types on bad schemas
        raise SchemaError(f"not an Avro schema: {type(exc).__name__}: {exc}") from None
    if fingerprint != record.fingerprint:
        raise SchemaError(f"schema's fingerprint is {fingerprint}, not {record.fingerprint}")
    if schema["name"].rsplit(".", 1)[-1] != record.record_name:
        raise SchemaError(f"schema {schema['name']} announced as {record.record_name}")
    return WriterSchema(record.record_name, record.version, parsed, schema, published=True)


def _load_bounded(text: str) -> Any:
    """``json.loads`` of at most ``MAX_NESTING`` levels (counted first: the parser recurses per level)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_NESTING:
        raise SchemaError(f"schema nested {deepest} levels deep (at most {MAX_NESTING})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"schema is not JSON: {exc}") from None


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 200 and not name[0].isdigit() and set(name) <= _NAME_CHARS


def _full_name(schema: dict[str, Any], namespace: str) -> str:
    name = schema.get("name")
    if not isinstance(name, str):
        raise SchemaError(f"named type without a name: {str(schema)[:100]}")
    space = schema.get("namespace", namespace) if "." not in name else ""
    if not isinstance(space, str):
        raise SchemaError(f"namespace of {name[:100]!r} is not a string")
    full = f"{space}.{name}" if space and "." not in name else name
    if not all(_is_name(part) for part in full.split(".")):
        raise SchemaError(f"name {full[:100]!r} breaks Avro's name rule [A-Za-z_][A-Za-z0-9_]*")
    return full


def check_schema_shape(schema: Any) -> None:
    """SchemaError unless ``schema`` is a record our decoders can take: safe names, known types, no recursion."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise SchemaError("a published schema must be a record")
    _Shape().walk(schema, "", 0)


class _Shape:
    def __init__(self) -> None:
        self.defined: set[str] = set()
        self.open: set[str] = set()  # named types being defined: a reference to one is recursion

    def _reference(self, name: str, namespace: str) -> None:
        candidates = {name, f"{namespace}.{name}" if namespace else name}
        if candidates & self.open:
            raise SchemaError(f"recursive type {name[:100]!r}")
        if not candidates & self.defined:
            raise SchemaError(f"type {name[:100]!r} used before it is defined")

    def walk(self, schema: Any, namespace: str, depth: int) -> None:
        if depth > MAX_NESTING:
            raise SchemaError(f"schema nested more than {MAX_NESTING} types deep")
        if isinstance(schema, str):
            if schema not in PRIMITIVE_NAMES:
                self._reference(schema, namespace)
            return
        if isinstance(schema, list):
            for branch in schema:
                self.walk(branch, namespace, depth + 1)
            return
        if not isinstance(schema, dict):
            raise SchemaError(f"not a schema: {str(schema)[:100]}")
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            self.walk(kind, namespace, depth + 1)
            return
        if schema.get("logicalType") not in _ALLOWED_LOGICAL:
            raise SchemaError(f"logical type {str(schema.get('logicalType'))[:50]!r} is not supported")
        if kind in PRIMITIVE_NAMES:
            return
        if kind == "array":
            self.walk(schema.get("items"), namespace, depth + 1)
        elif kind == "map":
            self.walk(schema.get("values"), namespace, depth + 1)
        elif kind == "enum":
            full = self._define(schema, namespace)
            symbols = schema.get("symbols")
            if not isinstance(symbols, list) or not all(_is_name(s) for s in symbols):
                raise SchemaError(f"enum {full} has a symbol that breaks Avro's name rule")
        elif kind == "record":
            full = self._define(schema, namespace)
            inner = full.rsplit(".", 1)[0] if "." in full else ""
            fields = schema.get("fields")
            if not isinstance(fields, list):
                raise SchemaError(f"record {full} has no field list")
            self.open.add(full)
            for field in fields:
                if not isinstance(field, dict) or not _is_name(field.get("name")):
                    raise SchemaError(f"record {full} has a field whose name breaks Avro's name rule: "
                                      f"{str(field)[:100]}")
                self.walk(field.get("type"), inner, depth + 1)
            self.open.discard(full)
        else:
            raise SchemaError(f"Avro type {str(kind)[:50]!r} is not supported")

    def _define(self, schema: dict[str, Any], namespace: str) -> str:
        full = _full_name(schema, namespace)
        if full in self.defined:
            raise SchemaError(f"type {full} defined twice")
        self.defined.add(full)
        return full
