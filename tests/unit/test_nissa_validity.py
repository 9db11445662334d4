"""One definition of valid: the services' codec path and Nissa's batch path give the same verdict per event.

The corpus is made without looking at the contracts' constraints: every numeric, string and
bytes leaf of a valid sample of every topic (inside lists and maps too) is overwritten, one at
a time, with values around every usual bound (NaN, +-inf, negatives, 0/1, 7, lengths around
50/80/100/249/255/1000, a bad pattern). Each case is encoded with fastavro, then judged by

* the services: ``SingleObjectCodec.decode`` (fastavro + the pydantic contract): stored or dead-lettered;
* Nissa: ``Batch`` -> ``Committer`` (contract checks derived from the models) -> DuckDB: a row
  in its table, or a ``dead_letters`` row.

Both must agree on every case, and the defects of issue 11 must be dead letters in both.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import duckdb
import fastavro
import pytest

from services.core.errors import DecodeError
from services.oona.codec import SINGLE_OBJECT_MAGIC, message_to_record
from services.oona.topic_registry import all_topics
from tests.samples import message_for
from tests.unit.nissa_fakes import CODEC, TABLE_OF_TOPIC, Message, commit_all, new_store

FLOATS = [math.nan, math.inf, -math.inf, -1.0, -1e-300, 0.0, 0.5, 1.0, 1.0000001, 7.0, 1e308]
INTS = [-(2**63), -1, 0, 1, 7, 8, 16, 17, 2**31, 2**63 - 1]
STRINGS = ["", "x", "é" * 50, "x" * 51, "x" * 80, "x" * 81, "é" * 80, "é" * 81, "x" * 100, "x" * 101, "x" * 249,
           "x" * 250, "x" * 255, "x" * 256, "x" * 1000, "x" * 1001, "0" * 64, "0" * 63, "G" * 64, "bad topic"]
BYTES = [b"", b"\x00" * 300]


def _resolve(schema, names: dict):
    if isinstance(schema, str) and schema in names:
        return names[schema]
    if isinstance(schema, dict):
        if schema.get("type") in ("record", "enum"):
            names.setdefault(schema["name"], schema)
        if isinstance(schema.get("type"), (dict, list)):
            return _resolve(schema["type"], names)
    return schema


def _leaves(schema, value, path: tuple, names: dict):
    """(path, new value) for every mutation of ``value`` (typed by ``schema``)."""
    schema = _resolve(schema, names)
    if isinstance(schema, list):
        inner = [b for b in schema if b != "null"][0]
        if value is not None:
            yield from _leaves(inner, value, path, names)
        elif _resolve(inner, names) in ("double", "long", "string", "bytes"):
            yield from _leaves(inner, {"double": 0.0, "long": 0, "string": "", "bytes": b""}[inner], path, names)
        return
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(schema, dict) and schema.get("logicalType"):
        return
    if kind == "record":
        for field in schema["fields"]:
            _resolve(field["type"], names)
            yield from _leaves(field["type"], value[field["name"]], path + (field["name"],), names)
    elif kind == "array":
        yield path, []
        if value:
            yield from _leaves(schema["items"], value[0], path + (0,), names)
    elif kind == "map":
        yield path, {}
        if value:
            key = next(iter(value))
            yield from _leaves(schema["values"], value[key], path + (key,), names)
            yield from ((path, {k: value[key]}) for k in STRINGS[:2])
        elif _resolve(schema["values"], names) == "double":
            yield from ((path, {"k": f}) for f in FLOATS)
    elif kind == "double":
        yield from ((path, f) for f in FLOATS)
    elif kind == "long":
        yield from ((path, i) for i in INTS)
    elif kind == "string":
        yield from ((path, s) for s in STRINGS)
    elif kind == "bytes":
        yield from ((path, b) for b in BYTES)


def _set(record: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(record)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def corpus() -> list[tuple[object, str, tuple, object, bytes]]:
    """(spec, event id, path, value, encoded bytes) for every mutation of every topic's sample."""
    cases = []
    for spec in all_topics():
        if spec.raw:
            continue
        schema = CODEC.store.raw(spec.record_name)
        parsed = fastavro.parse_schema(copy.deepcopy(schema))
        header = SINGLE_OBJECT_MAGIC + CODEC.store.fingerprint(spec.record_name)
        base = message_to_record(message_for(spec))
        base["schema_version"] = CODEC.store.version(spec.record_name)
        for i, (path, value) in enumerate([((), None), *_leaves(schema, base, (), {})]):
            event_id = f"case-{i}"
            record = _set(base, ("event_id",), event_id)
            if path:
                record = _set(record, path, value)
                if path == ("event_id",):
                    event_id = value
            body = io.BytesIO()
            try:
                fastavro.schemaless_writer(body, parsed, record)
            except (ValueError, TypeError, OverflowError):
                continue  # not encodable under the schema: not a case for the contract
            cases.append((spec, event_id, path, value, header + body.getvalue()))
    return cases


CORPUS = corpus()


def services_verdicts() -> dict[tuple[str, int], str]:
    verdicts = {}
    for offset, (spec, _, _, _, value) in enumerate(CORPUS):
        try:
            CODEC.decode(spec, value)
            verdicts[(spec.name, offset)] = "stored"
        except DecodeError:
            verdicts[(spec.name, offset)] = "dead-lettered"
    return verdicts


def nissa_verdicts(tmp_path) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
    """Verdict per (topic, offset) through Batch + Committer + DuckDB, and the dead letters' reasons."""
    messages = [Message(spec.name, 0, offset, value) for offset, (spec, _, _, _, value) in enumerate(CORPUS)]
    db = tmp_path / "nissa.duckdb"
    store = new_store(db)
    try:
        commit_all([(messages, {})], store)
    finally:
        store.close()
    verdicts, reasons = {}, {}
    with duckdb.connect(str(db), read_only=True) as con:
        for topic, table in TABLE_OF_TOPIC.items():
            if table == "dead_letters":
                continue
            for (offset,) in con.execute(f'SELECT kafka_offset FROM "{table}"').fetchall():
                verdicts[(topic, offset)] = "stored"
        for topic, offset, reason, origin in con.execute(
                "SELECT source_topic, source_offset, reason, origin FROM dead_letters").fetchall():
            assert origin == "nissa" and (topic, offset) not in verdicts, (topic, offset, reason)
            verdicts[(topic, offset)] = "dead-lettered"
            reasons[(topic, offset)] = reason
    return verdicts, reasons


def _disagreements(services: dict, nissa: dict) -> list[str]:
    out = []
    for offset, (spec, _, path, value, _) in enumerate(CORPUS):
        key = (spec.name, offset)
        if services[key] != nissa.get(key):
            out.append(f"{spec.record_name} {'.'.join(map(str, path))}={value!r:.40}: services {services[key]}, "
                       f"nissa {nissa.get(key)}")
    return out


def _case(record: str, path: tuple, value) -> int:
    for offset, (spec, _, p, v, _) in enumerate(CORPUS):
        if spec.record_name == record and p == path and (v == value or v != v and value != value):
            return offset
    raise AssertionError(f"no case {record} {path} {value!r}")


def test_services_and_nissa_agree_on_every_event(tmp_path):
    services = services_verdicts()
    nissa, reasons = nissa_verdicts(tmp_path)
    assert _disagreements(services, nissa) == []
    # Not vacuous: both sides store the valid samples and dead-letter the defects of issue 11.
    assert 1000 < len(CORPUS) and 300 < list(services.values()).count("dead-lettered") < len(CORPUS) - 300
    health = "HealthSignalMessage"
    for record, path, value in [
        (health, (), None),
        (health, ("payload", "dead_neuron_ratio"), 1.0),
        (health, ("payload", "epoch"), 0),
    ]:
        offset = _case(record, path, value)
        assert services[(CORPUS[offset][0].name, offset)] == "stored"
    for record, path, value, where in [
        (health, ("payload", "dead_neuron_ratio"), math.nan, "payload.dead_neuron_ratio"),
        (health, ("payload", "dead_neuron_ratio"), 7.0, "payload.dead_neuron_ratio"),
        (health, ("payload", "epoch"), -1, "payload.epoch"),
        (health, ("payload", "activation_variance"), math.inf, "payload.activation_variance"),
        ("FieldReportMessage", ("payload", "pre_metric"), -math.inf, "payload.pre_metric"),
        ("AdaptationDecisionMessage", ("payload", "features", "health"), math.nan, "payload.features{}"),
        ("SeedTransitionMessage", ("payload", "gates", 0, "value"), math.inf, "payload.gates[].value"),
        ("EpochCompletedMessage", ("payload", "state", "epoch"), -1, "payload.state.epoch"),
        ("KernelReadyMessage", ("payload", "kernel", "checksum"), "G" * 64, "payload.kernel.checksum"),
        ("BlueprintSubmittedMessage", ("payload", "blueprint", "architecture", "layers"), [],
         "payload.blueprint.architecture.layers"),
    ]:
        offset = _case(record, path, value)
        key = (CORPUS[offset][0].name, offset)
        assert services[key] == nissa[key] == "dead-lettered", (record, path, value)
        assert reasons[key].startswith(f"{record} violates its contract at {where}: "), reasons[key]


def test_the_per_event_path_for_models_with_validators_agrees_too(tmp_path, monkeypatch):
    """A model whose validators only pydantic can run is validated per event: same verdicts, no vectorised rule."""
    from services.nissa import admission
    from services.nissa.validity import checks_for

    monkeypatch.setattr(admission, "checks_for",
                        lambda table, model: dataclasses.replace(checks_for(table, model), rules=(), exact=True))
    nissa, _ = nissa_verdicts(tmp_path)
    assert _disagreements(services_verdicts(), nissa) == []


def test_a_validator_that_may_reject_makes_a_table_exact():
    from pydantic import field_validator

    from contracts import HealthSignal, OonaMessage
    from services.nissa.validity import checks_for
    from tests.unit.nissa_fakes import BY_RECORD

    class Picky(HealthSignal):
        @field_validator("layer_name")
        @classmethod
        def _no_dots(cls, value: str) -> str:
            if "." in value:
                raise ValueError("no dots")
            return value

    table = BY_RECORD["HealthSignalMessage"]
    assert not checks_for(table, OonaMessage[HealthSignal]).exact
    assert checks_for(table, OonaMessage[Picky]).exact


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_contracts_reject_non_finite_floats_everywhere(value):
    from pydantic import ValidationError

    from contracts import FieldReport, GateResult

    with pytest.raises(ValidationError, match="finite"):
        GateResult(name="g", passed=True, value=value, threshold=0.0)
    report = message_for(next(s for s in all_topics() if s.record_name == "FieldReportMessage")).payload
    with pytest.raises(ValidationError, match="finite"):
        FieldReport.model_validate(report.model_dump() | {"eval_metrics": {"delta": value}})
