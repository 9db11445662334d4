"""Pure batching: Kafka messages consumed since the last commit -> Arrow tables, one per DuckDB table.

No Kafka client and no database here: ``add`` takes anything that looks like a
confluent-kafka ``Message`` (``topic() partition() offset() key() value() headers()``),
``take`` hands the pending messages over and ``decode`` turns them into
``{table name: [Arrow tables]}`` ready for ``NissaStore.write`` (``drain`` does both).

Decoding picks, per writer schema (the single-object fingerprint of each value):
the vectorised ``ColumnarDecoder`` when the record flattens to scalar columns, else the
generated per-event ``RowDecoder``. Decoding against the exact writer schema is what
guarantees the column types, so the contracts' pydantic validation is not run on this
path (producers validate before they encode; the sink records facts as they were written).
A value that cannot be decoded (not single-object framed, unknown fingerprint, a schema of
another topic, a corrupt body) becomes a row of ``dead_letters`` with origin ``nissa`` and
the reason; DLQ messages become rows of ``dead_letters`` with origin ``dlq`` (re-drive markers,
which record that ``esper dlq redrive`` re-drove a dead letter, are no dead letters). The decoders
(``services/oona/avro``) raise nothing but ``DecodeError``; should a decoded row still not
fit its Arrow column, that row alone is dead-lettered too: ``decode`` never raises for what
a value holds, so no record can stop the sink.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from services.core.errors import DecodeError, SchemaError
from services.nissa.tables import Table, arrow_batch, dead_letters_table, row_from_record
from services.oona.avro import HEADER_LEN, RowDecoder, compile_decoder, single_object_fingerprint
from services.oona.avro.columnar import ColumnarDecoder, columnar_decoder
from services.oona.codec import message_to_record
from services.oona.consumer import dead_letter_from_message
from services.oona.dlq_records import is_redrive_marker
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import TopicSpec

SINK_GROUP = "nissa"
log = logging.getLogger(__name__)
# What Arrow raises for a Python value that does not fit its column type.
_ARROW_ERRORS = (pa.ArrowException, OverflowError, ValueError, TypeError)


@dataclass(frozen=True)
class WriterDecoders:
    version: int
    row: RowDecoder
    columnar: ColumnarDecoder | None


class Decoders:
    """Decoders for every writer schema the store knows (current and ``schemas/history``), compiled lazily.

    With a ``schema_log`` (``SchemaLogReader``), a fingerprint the store does not know is looked
    up there: a producer one version ahead published its schema before using it, and the store
    hands it out only if today's reader schema can read it. Its events then land in today's
    columns (fields it lacks get the column default, fields it added are read and skipped).
    """

    def __init__(self, store: SchemaStore, schema_log: Any = None) -> None:
        self._store = store
        self._schema_log = schema_log
        self._compiled: dict[bytes, WriterDecoders] = {}

    def for_value(self, header: bytes, table: Table) -> WriterDecoders:
        """The decoders of the writer schema named by a value's 10-byte header; DecodeError if none fits."""
        fingerprint = single_object_fingerprint(header)
        writer = self._store.writer(fingerprint)
        if writer is None and self._schema_log is not None and self._schema_log.refresh(fingerprint):
            writer = self._store.writer(fingerprint)
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {fingerprint.hex()}"
                              + (" (not on the schema log either)" if self._schema_log is not None else ""))
        if writer.record_name != table.record_name:
            raise DecodeError(f"schema {writer.record_name} v{writer.version} does not belong in {table.name} "
                              f"(expects {table.record_name})")
        version, raw = writer.version, writer.raw
        compiled = self._compiled.get(fingerprint)
        if compiled is None:
            try:
                compiled = WriterDecoders(version, compile_decoder(raw, table, HEADER_LEN),
                                          columnar_decoder(raw, table, HEADER_LEN))
            except SchemaError as exc:  # a schema from the log whose shape the decoders do not take
                raise DecodeError(f"writer schema {fingerprint.hex()} cannot be decoded into {table.name}: {exc}") \
                    from None
            self._compiled[fingerprint] = compiled
        return compiled


class Batch:
    """Messages by topic until ``take``; ``size`` is how many are pending.

    ``routes`` maps each consumed topic name to its spec and table (the DLQ's table is
    ``dead_letters``). ``fallback`` decodes values that are not single-object framed (the
    Confluent codec when a schema registry is configured): contract-validated, slow.
    """

    def __init__(self, routes: dict[str, tuple[TopicSpec, Table]], decoders: Decoders, fallback: Any = None) -> None:
        self.routes = routes
        self.decoders = decoders
        self.fallback = fallback
        self._pending: dict[str, list] = {}
        self.size = 0

    def add(self, messages: list) -> None:
        if not messages:
            return
        self.size += len(messages)
        first = messages[0].topic()
        topics = [m.topic() for m in messages]
        if topics.count(first) == len(topics):
            self._pending.setdefault(first, []).extend(messages)
            return
        for topic, message in zip(topics, messages, strict=True):
            self._pending.setdefault(topic, []).append(message)

    def take(self) -> dict[str, list]:
        """The pending messages by topic; the batch starts empty again."""
        pending, self._pending, self.size = self._pending, {}, 0
        return pending

    def decode(self, pending: Mapping[str, list]) -> dict[str, list[pa.Table]]:
        """Taken messages as Arrow tables by table name (dead letters under ``dead_letters``).

        Uses no state but the decoders' cache, so it can run in another thread than ``add``
        (one thread at a time).
        """
        out: dict[str, list[pa.Table]] = {}
        dead: list[tuple] = []
        for topic, messages in pending.items():
            spec, table = self.routes[topic]
            if spec.raw:
                dead.extend(_dlq_row(m) for m in messages if not is_redrive_marker(m))  # a marker is no letter
            else:
                out.setdefault(table.name, []).extend(self._decode(spec, table, messages, dead))
        if dead:
            out.setdefault(dead_letters_table().name, []).append(arrow_batch(dead_letters_table(), dead))
        return {name: [t for t in tables if t.num_rows] for name, tables in out.items()}

    def drain(self) -> dict[str, list[pa.Table]]:
        """``decode(take())``: everything pending as Arrow tables."""
        return self.decode(self.take())

    def _decode(self, spec: TopicSpec, table: Table, messages: list, dead: list[tuple]) -> list[pa.Table]:
        values = [m.value() for m in messages]
        headers = [v[:HEADER_LEN] if v is not None else b"" for v in values]
        groups: dict[bytes, list[int]]
        if headers.count(headers[0]) == len(headers):
            groups = {headers[0]: list(range(len(values)))}
        else:
            groups = {}
            for i, header in enumerate(headers):
                groups.setdefault(header, []).append(i)
        out: list[pa.Table] = []
        for header, index in groups.items():
            group = [messages[i] for i in index] if len(index) != len(messages) else messages
            group_values = [values[i] for i in index] if len(index) != len(messages) else values
            try:
                decoders = self.decoders.for_value(header, table)
            except DecodeError as exc:
                if self.fallback is not None and header[:1] == b"\x00":
                    out.append(self._fallback(spec, table, group, dead))
                else:
                    dead.extend(_failed_row(m, exc.reason, type(exc).__name__) for m in group)
                continue
            if decoders.columnar is not None:
                out.extend(self._columnar(decoders, table, group, group_values, dead))
            else:
                out.append(self._rows(decoders.row, table, group, group_values, dead))
        return out

    def _columnar(self, decoders: WriterDecoders, table: Table, messages: list, values: list,
                  dead: list[tuple]) -> list[pa.Table]:
        assert decoders.columnar is not None  # the caller's choice
        try:
            arrays, ok = decoders.columnar.decode(values)
        except DecodeError as exc:  # not expected; the row decoder then gives every value its own verdict
            log.warning("columnar decoding failed, decoding row by row table=%s reason=%s", table.name, exc.reason)
            ok = np.zeros(len(values), dtype=bool)
        if not ok.any():
            return [self._rows(decoders.row, table, messages, values, dead)]
        partitions = np.array([m.partition() for m in messages], dtype=np.int32)
        offsets = np.array([m.offset() for m in messages], dtype=np.int64)
        good = pa.Table.from_arrays([*arrays, pa.array(partitions), pa.array(offsets)], schema=table.arrow_schema)
        if ok.all():
            return [good]
        bad = np.flatnonzero(~ok)
        retried = self._rows(decoders.row, table, [messages[i] for i in bad], [values[i] for i in bad], dead)
        return [good.filter(pa.array(ok)), retried]

    def _rows(self, decode: RowDecoder, table: Table, messages: list, values: list, dead: list[tuple]) -> pa.Table:
        rows, kept = [], []
        for message, value in zip(messages, values, strict=True):
            try:
                rows.append(decode(value, message.partition(), message.offset()))
            except DecodeError as exc:
                dead.append(_failed_row(message, f"corrupt Avro body for {table.record_name}: {exc.reason}",
                                        "DecodeError"))
                continue
            kept.append(message)
        return _rows_to_arrow(table, rows, kept, dead)

    def _fallback(self, spec: TopicSpec, table: Table, messages: list, dead: list[tuple]) -> pa.Table:
        rows, kept = [], []
        for m in messages:
            try:
                record = message_to_record(self.fallback.decode(spec, m.value()))
            except DecodeError as exc:
                dead.append(_failed_row(m, exc.reason, type(exc).__name__))
                continue
            rows.append(row_from_record(table, record, m.partition(), m.offset()))
            kept.append(m)
        return _rows_to_arrow(table, rows, kept, dead)


def _rows_to_arrow(table: Table, rows: list[tuple], messages: list, dead: list[tuple]) -> pa.Table:
    """Decoded rows as one Arrow table; a row whose value does not fit its column is dead-lettered alone."""
    try:
        return arrow_batch(table, rows)
    except _ARROW_ERRORS:
        pass
    fitting = []
    for row, message in zip(rows, messages, strict=True):
        try:
            arrow_batch(table, [row])
        except _ARROW_ERRORS as exc:
            dead.append(_failed_row(message, f"{table.record_name} does not fit table {table.name}: "
                                             f"{type(exc).__name__}: {exc}", "DecodeError"))
            continue
        fitting.append(row)
    return arrow_batch(table, fitting)


def _failed_row(message: Any, reason: str, error_type: str) -> tuple:
    """A ``dead_letters`` row for a value the sink itself could not decode."""
    return (message.topic(), message.partition(), message.offset(), reason[:4000], error_type, SINK_GROUP,
            message.key(), message.value(), datetime.now(UTC), "nissa", message.partition(), message.offset())


def _dlq_row(message: Any) -> tuple:
    """A ``dead_letters`` row for a message of the DLQ topic (bytes + ``esper.dlq.*`` headers)."""
    try:
        d = dead_letter_from_message(message)
        fields = (d.source_topic, d.source_partition, d.source_offset, d.reason, d.error_type, d.consumer_group,
                  d.original_key, d.original_value, d.failed_at)
    except (ValueError, TypeError) as exc:  # headers that do not make a DeadLetter: keep the bytes anyway
        fields = ("unknown", 0, 0, f"unreadable DLQ headers: {exc}"[:4000], "BadDeadLetter", "",
                  message.key(), message.value(), datetime.now(UTC))
    return (*fields, "dlq", message.partition(), message.offset())
