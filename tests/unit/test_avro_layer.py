"""The Avro layer's checks, one by one: each bad body is a DecodeError with its reason in every decoder."""

from __future__ import annotations

import pytest

from services.core.errors import DecodeError
from services.nissa.tables import table_for
from services.oona.avro import HEADER_LEN, compile_decoder, compile_validator, encode_long
from services.oona.avro.columnar import columnar_decoder
from services.oona.avro.schema_walk import NamedTypes
from services.oona.avro.wire import TIMESTAMP_MICROS_MAX, TIMESTAMP_MICROS_MIN, read_varint
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from tests.fuzz.avro_differential import varint_spans
from tests.samples import message_for

CODEC = SingleObjectCodec()
STORE = CODEC.store
HEALTH = topic_spec("telemetry.seed.health")  # flattens to scalars: the columnar decoder applies
TRANSITION = topic_spec("lifecycle.seed.transitions")  # an enum and an array: the row decoder only


def spans_of(spec, data: bytes) -> list[tuple[int, int]]:
    raw = STORE.raw(spec.record_name)
    found: list[tuple[int, int]] = []
    varint_spans(raw, NamedTypes(raw), data, HEADER_LEN, found)
    return found


def with_varint(spec, index: int, new: bytes) -> bytes:
    """The sample of ``spec`` with its ``index``-th varint replaced by ``new``."""
    data = CODEC.encode(spec, message_for(spec))
    start, end = spans_of(spec, data)[index]
    return data[:start] + new + data[end:]


def health(index: int, new: bytes) -> bytes:
    # HealthSignal's varints: 0 event_id length, 2 timestamp, 3 trace_id branch, 8 layer_id, 10 layer_name length
    return with_varint(HEALTH, index, new)


def transition(index: int, new: bytes) -> bytes:
    # SeedTransition's varints: 11 from_state, 13 epoch, 17 the gates array's first block count
    return with_varint(TRANSITION, index, new)


def _utf8_broken() -> bytes:
    data = CODEC.encode(HEALTH, message_for(HEALTH))
    at = data.index(b"body.0")
    return data[:at] + b"\xff" + data[at + 1 :]


GOOD_HEALTH = CODEC.encode(HEALTH, message_for(HEALTH))
BAD = [  # (spec, value, reason)
    (HEALTH, health(0, encode_long(2**63 - 1)), "string length 9223372036854775807 beyond"),
    (HEALTH, health(0, encode_long(-1)), "string length -1"),
    (HEALTH, health(2, b"\xff" * 9 + b"\x7f"), "wider than 64 bits"),
    (HEALTH, health(2, b"\xff" * 9 + b"\x02"), "wider than 64 bits"),
    (HEALTH, health(2, b"\xff" * 10 + b"\x01"), "wider than 64 bits"),
    (HEALTH, health(2, encode_long(TIMESTAMP_MICROS_MAX + 1)), "out of range"),
    (HEALTH, health(2, encode_long(TIMESTAMP_MICROS_MIN - 1)), "out of range"),
    (HEALTH, health(3, b"\x04"), "bad union branch"),
    (HEALTH, health(3, b"\x01"), "bad union branch"),
    (HEALTH, _utf8_broken(), "invalid UTF-8"),
    (HEALTH, GOOD_HEALTH + b"\x00", "1 trailing bytes"),
    (HEALTH, GOOD_HEALTH[:-1], "truncated"),
    (HEALTH, GOOD_HEALTH[: HEADER_LEN + 3], "beyond|truncated"),
    (TRANSITION, transition(11, encode_long(99)), "enum index 99 out of range"),
    (TRANSITION, transition(11, encode_long(-1)), "enum index -1 out of range"),
    (TRANSITION, transition(13, b"\x80" * 9 + b"\x03"), "wider than 64 bits"),
    (TRANSITION, transition(17, encode_long(2**62)), "array block of 4611686018427387904 items beyond"),
    (TRANSITION, transition(17, encode_long(-(2**62))), "array block size beyond|array block of"),
]


@pytest.mark.parametrize("spec, value, reason", BAD, ids=[f"{s.payload.__name__}-{r[:24]}" for s, _, r in BAD])
def test_each_bad_body_is_a_decode_error_with_its_reason(spec, value, reason):
    table = table_for(spec, STORE)
    raw = STORE.raw(spec.record_name)
    with pytest.raises(DecodeError, match=reason):
        compile_decoder(raw, table, HEADER_LEN)(value, 0, 0)
    with pytest.raises(DecodeError, match=reason):
        compile_validator(raw, HEADER_LEN)(value)
    with pytest.raises(DecodeError):  # the services reject the same bytes
        CODEC.decode_record(spec, value)
    columnar = columnar_decoder(raw, table, HEADER_LEN)
    if columnar is not None:
        good = CODEC.encode(spec, message_for(spec))
        _, ok = columnar.decode([good, value, good])
        assert ok.tolist() == [True, False, True]


def test_the_widest_varints_that_fit_64_bits_decode():
    assert read_varint(b"\xff" * 9 + b"\x01", 0) == (2**64 - 1, 10)
    assert read_varint(b"\xfe" + b"\xff" * 8 + b"\x01", 0) == (2**64 - 2, 10)
    for layer_id in (2**63 - 1, -(2**63)):
        message = message_for(HEALTH)
        message = message.model_copy(update={"payload": message.payload.model_copy(update={"layer_id": layer_id})})
        data = CODEC.encode(HEALTH, message)
        table = table_for(HEALTH, STORE)
        row = compile_decoder(STORE.raw(HEALTH.record_name), table, HEADER_LEN)(data, 0, 0)
        assert row[table.column_names.index("layer_id")] == layer_id
        arrays, ok = columnar_decoder(STORE.raw(HEALTH.record_name), table, HEADER_LEN).decode([data])
        assert ok.all() and arrays[table.column_names.index("layer_id")].to_pylist() == [layer_id]


def test_the_services_reject_a_varint_fastavro_wraps_silently():
    """fastavro reads a 10-byte varint above 2**64 as -2**63; Nissa rejects it, so the services must too."""
    value = transition(13, b"\xff" * 9 + b"\x7f")  # SeedTransition.epoch: a plain long
    with pytest.raises(DecodeError, match="wider than 64 bits"):
        CODEC.decode_record(TRANSITION, value)
