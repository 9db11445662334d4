"""``decode_batch``, what every OonaConsumer runs, against ``decode`` record by record as the oracle.

``decode`` validates each record with the contract's ``model_validate``; ``decode_batch`` decodes
with the generated record decoder and validates the whole list in one pydantic-core call. For
random records of every topic (numbers, strings and lists drawn across the contracts' bounds, so
many violate them) mixed with corrupt values, both must accept the same records, produce equal
messages, reject the others with the same error type and reason, and keep the batch's order.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.errors import ContractViolationError, DecodeError
from services.oona.codec import SingleObjectCodec, cyclic_gc_paused, message_to_record
from services.oona.topic_registry import avro_topics
from tests.samples import message_for, single_object_value

CODEC = SingleObjectCodec()
SPECS = avro_topics()


def _value(spec, record: dict[str, Any]) -> bytes | None:
    return single_object_value(CODEC, spec, record)


def _leaf(draw, value: Any) -> Any:
    """A replacement for one leaf of a record, often across the contract's bounds."""
    if isinstance(value, bool):
        return draw(st.booleans())
    if isinstance(value, int):
        return draw(st.one_of(st.just(value), st.integers(-3, 3), st.integers(-(2**40), 2**40)))
    if isinstance(value, float):
        return draw(st.one_of(st.just(value), st.floats(-2.0, 2.0), st.floats(allow_nan=True, allow_infinity=True)))
    if isinstance(value, str):
        return draw(st.one_of(st.just(value), st.text(max_size=4), st.text(alphabet="ab.-_ /", min_size=70,
                                                                              max_size=300)))
    return value


def _mutated(draw, record: Any) -> Any:
    if isinstance(record, dict):
        return {k: (_mutated(draw, v) if draw(st.integers(0, 3)) == 0 else v) for k, v in record.items()}
    if isinstance(record, list):
        return [_mutated(draw, v) for v in record]
    return _leaf(draw, record)


@st.composite
def batches(draw):
    spec = draw(st.sampled_from(SPECS))
    base = message_to_record(message_for(spec))
    values: list[bytes | None] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            values.append(draw(st.sampled_from([None, b"", b"\xc3\x01" + b"\x00" * 8 + b"\x02"])))
            continue
        value = _value(spec, _mutated(draw, base) if kind > 2 else base)
        if value is not None and kind == 1:  # a corrupt body: one byte set
            at = draw(st.integers(10, len(value) - 1))
            value = value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1:]
        values.append(value if value is not None else _value(spec, base))
    return spec, values


def _one_by_one(spec, values):
    out = []
    for value in values:
        try:
            out.append(CODEC.decode(spec, value))
        except DecodeError as exc:
            out.append(exc)
    return out


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_a_batch_decodes_as_each_record_alone_bad_records_in_their_place(batch):
    spec, values = batch
    got = CODEC.decode_batch(spec, values)
    want = _one_by_one(spec, values)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, Exception):
            assert type(g) is type(w) and g.reason == w.reason
        else:
            assert not isinstance(g, Exception), g
            assert g == w and type(g) is type(w)


def test_the_search_met_both_verdicts_and_contract_violations():
    """The strategy is not vacuous: across a fixed sample, batches with violations and clean ones."""
    kinds: set[str] = set()

    @settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batches())
    def sample(batch):
        for outcome in CODEC.decode_batch(*batch):
            kinds.add(type(outcome).__name__ if isinstance(outcome, Exception) else "message")

    sample()
    assert {"message", ContractViolationError.__name__, DecodeError.__name__} <= kinds


def test_one_bad_record_leaves_its_neighbours_delivered_in_order():
    spec = next(s for s in SPECS if s.record_name == "HealthSignalMessage")
    good = [message_for(spec, run_id=f"run-{i}") for i in range(5)]
    bad = message_to_record(good[2])
    bad["payload"]["dead_neuron_ratio"] = 1.5  # the contract's bound is 1
    values = [CODEC.encode(spec, m) for m in good]
    values[2] = _value(spec, bad)
    got = CODEC.decode_batch(spec, values)
    assert isinstance(got[2], ContractViolationError) and "dead_neuron_ratio" in got[2].reason
    assert [m.run_id for i, m in enumerate(got) if i != 2] == ["run-0", "run-1", "run-3", "run-4"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_for_a_batch_and_left_as_it_was(enabled):
    seen = []
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with cyclic_gc_paused():
            seen.append(gc.isenabled())
        assert seen == [False] and gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_validator_that_raises_on_one_record_fails_that_record_only():
    """pydantic lets a validator's TypeError through: it is that record's failure, as with ``decode``."""
    from types import SimpleNamespace

    from pydantic import BaseModel, field_validator

    from services.oona.codec import records_to_messages

    class Picky(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def _not_seven(cls, n: int) -> int:
            if n == 7:
                raise TypeError("seven")
            return n

    spec = SimpleNamespace(message_type=Picky, record_name="Picky")
    got = records_to_messages(spec, [{"n": 1}, {"n": 7}, {"n": -1}, {"n": "x"}])
    assert got[0] == Picky(n=1) and got[2] == Picky(n=-1)
    assert isinstance(got[1], TypeError) and isinstance(got[3], ContractViolationError)
