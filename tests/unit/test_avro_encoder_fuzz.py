"""The generated encoder against fastavro's ``schemaless_writer`` on random values of every schema.

The encoder remembers the bytes of repeated values (memos, cleared when full), reads fields
out of ``__dict__``, inlines nested records and looks up the envelope's run of fields as one
key: none of that may change a byte. Values are drawn from each committed schema (random
and from small pools, so memo hits, misses and equal keys of different kinds all happen),
encoded through the codec exactly as the services encode them, and compared with fastavro's
bytes after the single-object header. Bounded and derandomized, so CI is deterministic.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.oona.avro import SINGLE_OBJECT_MAGIC
from services.oona.avro.schema_walk import NamedTypes
from services.oona.codec import SingleObjectCodec
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import avro_topics
from tests.samples import health_signal

STORE = SchemaStore()
CODEC = SingleObjectCodec(STORE)
SPECS = list(avro_topics())
# A pair: (what fastavro is given, what the encoder is given). Records are dicts for one and
# objects with a __dict__ (as pydantic models are) for the other.
Pair = tuple[Any, Any]

_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
_TIMESTAMPS = st.one_of(
    st.sampled_from([datetime(2026, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES),
)
_LONGS = st.one_of(
    st.sampled_from([0, 1, -1, 63, 64, -65, 8191, 8192, 2**31 - 1, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
_STRINGS = st.one_of(st.sampled_from(["", "a", "run-1", "é/ü" * 50, "x" * 300]), st.text(max_size=300))


def _same(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Pair]:
    return strategy.map(lambda v: (v, v))


def _pairs(schema: Any, names: NamedTypes) -> st.SearchStrategy[Pair]:
    schema = names.resolve(schema)
    if isinstance(schema, list):
        other = next(b for b in schema if b != "null")
        return st.one_of(st.just((None, None)), _pairs(other, names))
    if isinstance(schema, str):
        schema = {"type": schema}
    kind = schema["type"]
    if kind == "long" and schema.get("logicalType") == "timestamp-micros":
        return _same(_TIMESTAMPS)
    if kind == "record":
        fields = [(f["name"], _pairs(f["type"], names)) for f in schema["fields"]]
        return st.tuples(*(s for _, s in fields)).map(lambda values: (
            {name: v[0] for (name, _), v in zip(fields, values, strict=True)},
            SimpleNamespace(**{name: v[1] for (name, _), v in zip(fields, values, strict=True)})))
    if kind == "enum":
        return _same(st.sampled_from(schema["symbols"]))
    if kind == "array":
        return st.lists(_pairs(schema["items"], names), max_size=3).map(
            lambda items: ([i[0] for i in items], [i[1] for i in items]))
    if kind == "map":
        return st.dictionaries(_STRINGS, _pairs(schema["values"], names), max_size=3).map(
            lambda items: ({k: v[0] for k, v in items.items()}, {k: v[1] for k, v in items.items()}))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1), "long": _LONGS,
        "float": st.floats(width=32), "double": st.floats(), "string": _STRINGS, "bytes": st.binary(max_size=40),
    }
    return _same(simple[kind])


def _fastavro_bytes(record_name: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, STORE.reader(record_name), record)
    return SINGLE_OBJECT_MAGIC + STORE.fingerprint(record_name) + out.getvalue()


def _message_pairs(record_name: str) -> st.SearchStrategy[Pair]:
    raw = STORE.raw(record_name)
    return _pairs(raw, NamedTypes(raw))


MESSAGES = {spec.record_name: st.lists(_message_pairs(spec.record_name), min_size=1, max_size=3) for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.record_name)
@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_values_encode_as_fastavro_writes_them(spec, data):
    batch = data.draw(MESSAGES[spec.record_name])
    for record, obj in batch:
        record["schema_version"] = STORE.version(spec.record_name)  # the codec writes its own version
        assert CODEC.encode(spec, obj) == _fastavro_bytes(spec.record_name, record)


def test_memos_cleared_when_full_keep_every_byte():
    """More distinct values than a memo holds, then the first ones again (hits after clearing)."""
    spec = next(s for s in SPECS if s.record_name == "HealthSignalMessage")
    codec = SingleObjectCodec(STORE)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    messages = [
        spec.message_type(sender_id="tests", topic=spec.name, run_id=f"run-{i % 7000}",
                          timestamp=start + timedelta(microseconds=i),
                          payload=health_signal(epoch=i, seed_idx=i % 9000).model_copy(update={"layer_name": f"l{i}"}))
        for i in range(10_000)
    ]
    for message in [*messages, *messages[:50]]:
        record = message.model_dump()
        record["schema_version"] = STORE.version(spec.record_name)
        assert codec.encode(spec, message) == _fastavro_bytes(spec.record_name, record)
