"""The codec's fast path (generated checks + construction, no pydantic) against pydantic, differentially.

For every topic whose contract has a plan, random records whose leaves are drawn at and across
the contracts' bounds (NaN and the infinities, -0.0, lengths around each limit in ASCII and in
multi-byte characters, strings with a trailing newline against the patterns, enum symbols,
None for optional fields, the legacy decision link in ``metadata``, lists around their length
limits), encoded as Avro, and now and then a corrupt byte. The oracle is the slow path:
``model_validate`` of the generated record decoder's record (fastavro's record: see
``tests/fuzz/avro_differential.py``). For each value the generated decoder itself must

* accept exactly what pydantic accepts, with an equal model: ``==``, the same ``model_dump``, the
  same fields set and the same type at every node (an enum member, not its string), and
* reject (ContractCheckFailed or DecodeError) what pydantic rejects,

and ``decode`` / ``decode_batch`` must give pydantic's message or its error with the same reason.
One codec serves every example, so its memos (the envelope's bytes, accepted patterns) carry
over from value to value, as in a consumer.
"""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contracts import TopicName, enums
from contracts.control import LEGACY_LINK_KEYS
from services.core.errors import ContractViolationError, DecodeError
from services.oona.avro.model_decoder import ContractCheckFailed
from services.oona.codec import SingleObjectCodec, message_to_record
from services.oona.topic_registry import avro_topics, topic_spec
from tests.samples import message_for, single_object_value

CODEC = SingleObjectCodec()
# The contracts whose every rule the generated checks reproduce; the others keep pydantic per record
# (their validators compute: content hashes, IR limits, the artifact's place, a kernel's shape bounds).
FAST = {"HealthSignalMessage", "EpochCompletedMessage", "AdaptationDecisionMessage", "KasminaCommandMessage",
        "SeedTransitionMessage", "KernelCharacterizedMessage", "FieldReportMessage", "PolicyPublishedMessage",
        "PolicyPromotedMessage"}
FAST_SPECS = [spec for spec in avro_topics() if spec.record_name in FAST]

_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0, 0.5, 1.0000000000000002, 0.9999999999999999,
           -1e-300, 5e-324, 1.7976931348623157e308]
_INTS = [-1, 0, 1, 2, 16, 17, 1024, 1025, 2**31 - 1, -(2**31), 2**63 - 1]
_LENGTHS = [0, 1, 12, 20, 40, 41, 49, 50, 51, 64, 79, 80, 81, 99, 100, 101, 249, 250, 255, 256, 999, 1000, 1001]
_STRINGS = ["", "a\n", "\na", "a b", "telemetry.seed.health", "gnn-0123456789ab", "gnn-0123456789ab\n",
            "gnn-0123456789AB", "0" * 64, "0" * 64 + "\n", "0" * 63, "inline", "inline\n", "blob:" + "a" * 64,
            "blob:" + "a" * 63, "germinate", "culled", "dormant", "fossilized", "add_seed", "no_op", "ready",
            "failed", "rolled_back"]
_ENUM_VALUES = sorted(member.value for kind in vars(enums).values()
                      if isinstance(kind, type) and issubclass(kind, Enum) and kind is not Enum for member in kind)


def _text(draw) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(_STRINGS + _ENUM_VALUES))
    length = draw(st.sampled_from(_LENGTHS))
    return draw(st.sampled_from(["a", "é", "-", "Z", "9", "😀"])) * length + draw(st.sampled_from(["", "\n", "."]))


def _leaf(draw, value: Any) -> Any:
    """A replacement for one leaf, at or across the contracts' bounds; None now and then."""
    if draw(st.integers(0, 9)) == 0:
        return None
    if isinstance(value, bool):
        return draw(st.booleans())
    if isinstance(value, int):
        return draw(st.one_of(st.sampled_from(_INTS), st.integers(-(2**63), 2**63 - 1)))
    if isinstance(value, float):
        return draw(st.one_of(st.sampled_from(_FLOATS), st.floats()))
    if isinstance(value, datetime):
        return draw(st.sampled_from([value, value - timedelta(microseconds=1), datetime(1970, 1, 1, tzinfo=UTC),
                                     datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]))
    if value is None:  # an optional field: a value of some type (Avro takes the one of the field's)
        return draw(st.one_of(st.integers(-1, 3), st.floats(-1, 2), st.booleans(), st.just(datetime.now(UTC)),
                              st.builds(lambda: _text(draw))))
    if isinstance(value, str):
        return _text(draw)
    return value


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every leaf of a record, and every list and map (their length, their keys), as a path of keys."""
    if isinstance(value, dict):
        inner = [p for k, v in value.items() for p in _paths(v, path + (k,))]
        return inner + [path] if path and path[-1] == "metadata" else inner
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, path + (i,))] + [path]
    return [path]


def _replacement(draw, value: Any) -> Any:
    if isinstance(value, list):
        return draw(st.sampled_from([[], value * 2, value * 513]))  # 1,026 items: past catalog_positions' 1,024
    if isinstance(value, dict):  # metadata: AdaptationDecision's legacy link, and other keys
        return {k: draw(st.sampled_from(["", "germinate", "wiggle", "c" * 50, "c" * 51, "c" * 80, "c" * 81]))
                for k in draw(st.lists(st.sampled_from([*LEGACY_LINK_KEYS, "x"]), max_size=3))}
    return _leaf(draw, value)


def _mutated(draw, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with one to three of its leaves, lists or maps replaced (more would mask one another)."""
    record = copy.deepcopy(record)
    for path in draw(st.lists(st.sampled_from(_paths(record)), min_size=1, max_size=3)):
        node = record
        try:
            for key in path[:-1]:
                node = node[key]
            old = node[path[-1]]
        except (IndexError, KeyError, TypeError):  # under a list or map an earlier path replaced
            continue
        node[path[-1]] = _replacement(draw, old)
    return record


@st.composite
def batches(draw):
    spec = draw(st.sampled_from(FAST_SPECS))
    base = message_to_record(message_for(spec))
    values: list[bytes | None] = []
    for _ in range(draw(st.integers(1, 8))):
        value = single_object_value(CODEC, spec, _mutated(draw, base) if draw(st.integers(0, 4)) else base)
        if value is None:
            value = single_object_value(CODEC, spec, base)
        if draw(st.integers(0, 9)) == 0:  # a corrupt body: one byte set
            at = draw(st.integers(10, len(value) - 1))
            value = value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1:]
        values.append(value)
    return spec, values


def _pydantic(spec, value: bytes) -> Any:
    """The oracle: ``model_validate`` of the record decoder's record, or the DecodeError it raises."""
    try:
        return spec.message_type.model_validate(CODEC.decode_record(spec, value))
    except DecodeError as exc:
        return exc
    except Exception:  # a ValidationError
        return ContractViolationError("pydantic rejects it")


def assert_same(got: Any, want: Any, where: str = "message") -> None:
    """Equal, and of the same type at every node: models field by field, with their fields set."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} is not {type(want).__name__}"
    if isinstance(want, BaseModel):
        assert got.model_fields_set == want.model_fields_set, where
        assert got.__pydantic_extra__ == want.__pydantic_extra__, where
        assert got.__pydantic_private__ == want.__pydantic_private__, where
        assert list(got.__dict__) == list(want.__dict__), where
        for name in want.__dict__:
            assert_same(got.__dict__[name], want.__dict__[name], f"{where}.{name}")
    elif isinstance(want, (list, dict)):
        assert len(got) == len(want), where
        pairs = zip(got.items(), want.items(), strict=True) if isinstance(want, dict) else zip(got, want, strict=True)
        for g, w in pairs:
            assert_same(g, w, where + "[]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
    else:
        assert got == want, where
        if isinstance(want, datetime):
            assert got.utcoffset() == want.utcoffset(), where


@settings(max_examples=250, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_the_fast_path_accepts_exactly_what_pydantic_accepts_and_builds_the_same_model(batch):
    spec, values = batch
    header, fast = CODEC.fast_decoder(spec)
    want = [_pydantic(spec, value) for value in values]
    for value, w in zip(values, want, strict=True):
        if isinstance(w, Exception):
            with pytest.raises((ContractCheckFailed, DecodeError)):
                fast(value)
        else:
            assert value.startswith(header)
            got = fast(value)
            assert_same(got, w)
            assert got == w and got.model_dump() == w.model_dump()
    # The codec: pydantic's message, or its error with its reason, for each value alone and in the batch.
    slow = []
    for value in values:
        try:
            slow.append(CODEC._decode_slow(spec, value))
        except DecodeError as exc:
            slow.append(exc)
    for got in (CODEC.decode_batch(spec, values), [_decode(spec, value) for value in values]):
        for g, s in zip(got, slow, strict=True):
            if isinstance(s, Exception):
                assert type(g) is type(s) and g.reason == s.reason
            else:
                assert_same(g, s)


def _edges(value: Any) -> list[Any]:
    """The edge values of a leaf's type (every one of them, for the exhaustive test)."""
    if isinstance(value, bool):
        return [True, False, None]
    if isinstance(value, int):
        return [*_INTS, None]
    if isinstance(value, float):
        return [*_FLOATS, None]
    if isinstance(value, str):
        return [*_STRINGS, *_ENUM_VALUES, *(c * n for c in ("a", "é") for n in _LENGTHS), None]
    if value is None:
        return ["", "a" * 80, "a" * 81, 0, -1, 1.5, math.nan, True]
    if isinstance(value, list):
        return [[], value * 2, value * 513]
    if isinstance(value, dict):
        return [{}, {k: "" for k in LEGACY_LINK_KEYS}, {"command_id": "c" * 80, "action": "cull"},
                {"action": "wiggle", "family": "f" * 51}]
    return []


@pytest.mark.parametrize("spec", FAST_SPECS, ids=lambda s: s.record_name)
def test_every_edge_value_at_every_leaf_of_every_fast_contract(spec):
    """Exhaustive over one-leaf changes of the sample: each edge value of the leaf's type, alone."""
    header, fast = CODEC.fast_decoder(spec)
    base = message_to_record(message_for(spec))
    verdicts = set()
    for path in _paths(base):
        node = base
        for key in path[:-1]:
            node = node[key]
        for edge in _edges(node[path[-1]]):
            record = copy.deepcopy(base)
            target = record
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = edge
            value = single_object_value(CODEC, spec, record)
            if value is None:
                continue
            want = _pydantic(spec, value)
            verdicts.add(isinstance(want, Exception))
            if isinstance(want, Exception):
                with pytest.raises((ContractCheckFailed, DecodeError)):
                    fast(value)
            else:
                assert_same(fast(value), want, f"{spec.record_name}{list(path)}={edge!r}")
    assert verdicts == {True, False}


def _decode(spec, value):
    try:
        return CODEC.decode(spec, value)
    except DecodeError as exc:
        return exc


def test_the_search_met_both_verdicts_on_every_fast_topic():
    """Not vacuous: across a fixed sample, each fast topic had values pydantic accepts and values it rejects."""
    seen: set[tuple[str, bool]] = set()

    @settings(max_examples=400, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batches())
    def sample(batch):
        spec, values = batch
        seen.update((spec.record_name, not isinstance(_pydantic(spec, v), Exception)) for v in values)

    sample()
    assert seen == {(name, verdict) for name in FAST for verdict in (True, False)}


def test_exactly_these_contracts_have_the_fast_path():
    assert {spec.record_name for spec in avro_topics() if CODEC.fast_decoder(spec) is not None} == FAST


@pytest.mark.parametrize("topic, expect", [("telemetry.seed.health", True), ("abc\n", False), ("a b", False),
                                           ("x" * 249, True), ("x" * 250, False), ("", False)])
def test_the_topic_pattern_is_pydantics_own_a_trailing_newline_included(topic, expect):
    """Python's ``re`` lets ``$`` match before a final newline; the contracts' engine (Rust's) does not."""
    spec = topic_spec(TopicName.TELEMETRY_SEED_HEALTH.value)
    record = message_to_record(message_for(spec))
    record["topic"] = topic
    value = single_object_value(CODEC, spec, record)
    if expect:
        assert CODEC.decode(spec, value).topic == topic
    else:
        with pytest.raises(ContractViolationError, match="topic"):
            CODEC.decode(spec, value)


def test_a_legacy_decision_link_is_lifted_by_pydantic():
    """A decision that names no command and carries the v1 link in ``metadata``: read as pydantic reads it."""
    spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value)
    record = message_to_record(message_for(spec))
    record["payload"].update(command_id=None, action=None, family=None,
                             metadata={"command_id": "cmd-1", "action": "germinate", "family": ""})
    got = CODEC.decode(spec, single_object_value(CODEC, spec, record))
    assert (got.payload.command_id, got.payload.action, got.payload.family) == ("cmd-1", "germinate", None)
    assert got.payload.metadata == {}
