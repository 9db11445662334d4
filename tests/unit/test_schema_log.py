"""Schemas on the log, without a broker: records, their checks as untrusted data, resolution by consumers."""

from __future__ import annotations

import json

import pytest
from pydantic import create_model

from contracts import HealthSignal
from services.core.errors import SchemaError, UnknownSchemaError
from services.nissa.batch import Batch, Decoders
from services.nissa.sink import sink_tables
from services.oona import schema_store
from services.oona.avro import HEADER_LEN, compile_decoder, compile_validator
from services.oona.avro.layout import NoColumns
from services.oona.codec import SingleObjectCodec
from services.oona.published_schemas import MAX_NESTING, publication, read_publication
from services.oona.schema_store import SchemaStore, learn_published, schema_fingerprint
from services.oona.topic_registry import TOPICS, avro_topics, data_topics, topic_spec
from tests.fixtures.schema_ahead import ADDED, DROPPED, RECORD, next_health_schema, schemas_one_version_ahead
from tests.samples import health_signal, message_for

HEALTH = topic_spec("telemetry.seed.health")
HealthSignalNext = create_model("HealthSignalNext", __base__=HealthSignal, gradient_variance=(float, 0.0))


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts with nothing learned from a schema log."""
    monkeypatch.setattr(schema_store, "_PUBLISHED", {})


class FakeSchemaLog:
    """The schema log as a list of (key, value) records; ``refresh`` learns them as the Kafka reader does."""

    def __init__(self, *records: tuple[bytes, bytes]) -> None:
        self.records = list(records)
        self.refreshes = 0

    def refresh(self, fingerprint: bytes) -> bool:
        self.refreshes += 1
        for key, value in self.records:
            try:
                learn_published(read_publication(key, value))
            except SchemaError:
                continue
        return schema_store.published_writer(fingerprint) is not None


def _ahead(tmp_path, schema=None) -> tuple[SingleObjectCodec, tuple[bytes, bytes]]:
    """A codec one version ahead and the schema-log record its producer publishes first."""
    codec = SingleObjectCodec(SchemaStore(schemas_one_version_ahead(tmp_path / "schemas", schema)))
    return codec, publication(RECORD, *codec.writer_schema(RECORD))


def _next_event(codec: SingleObjectCodec, **payload) -> bytes:
    fields = health_signal().model_dump() | {"gradient_variance": 0.25} | payload
    message = HEALTH.message_type(sender_id="v-next", topic=HEALTH.name, run_id="run-next",
                                  payload=HealthSignalNext(**fields))
    return codec.encode(HEALTH, message)


# -- the records ---------------------------------------------------------------------------------
def test_every_committed_schema_round_trips_through_a_schema_log_record():
    store = SchemaStore()
    for spec in avro_topics():
        key, value = publication(spec.record_name, store.version(spec.record_name), store.raw(spec.record_name))
        writer = read_publication(key, value)
        assert key == store.fingerprint(spec.record_name).hex().encode()
        assert (writer.record_name, writer.version, writer.raw) == (
            spec.record_name, store.version(spec.record_name), store.raw(spec.record_name))


def _record(schema: dict, **overrides) -> tuple[bytes, bytes]:
    fingerprint = overrides.pop("fingerprint", None)
    try:
        fingerprint = fingerprint or schema_fingerprint(schema).hex()
    except Exception:  # fastavro refuses it: any key will do, the checks come first
        fingerprint = "0" * 16
    value = {"fingerprint": fingerprint, "record_name": RECORD, "version": 9,
             "writer_schema": json.dumps(schema)} | overrides
    return fingerprint.encode(), json.dumps(value).encode()


INJECTION = "x': __import__('os').system('touch /tmp/esper-pwned'), 'y"


def _with_field_name(name):
    return next_health_schema(lambda fields: fields.append({"name": name, "type": "long", "default": 0}))


def _recursive():
    schema = next_health_schema()
    schema["fields"].append({"name": "parent", "type": ["null", "esper.HealthSignalMessage"], "default": None})
    return schema


def _deep():
    inner: object = "long"
    for _ in range(MAX_NESTING + 5):
        inner = {"type": "array", "items": inner}
    return next_health_schema(lambda fields: fields.append({"name": "deep", "type": inner, "default": []}))


@pytest.mark.parametrize("make, reason", [
    (lambda: _with_field_name(INJECTION), "name rule"),
    (lambda: _with_field_name("class"), None),  # a keyword is a valid Avro name and only ever a dict key
    (lambda: {**next_health_schema(), "name": "esper.Health'Signal"}, "name rule"),
    (lambda: {**next_health_schema(), "namespace": "a;b", "name": "HealthSignalMessage"}, "name rule"),
    (lambda: next_health_schema(lambda f: f.append(
        {"name": "mood", "type": {"type": "enum", "name": "Mood", "symbols": ["ok", "x')\nimport os#"]},
         "default": "ok"})), "symbol"),
    (_recursive, "recursive"),
    (_deep, "nested"),
    (lambda: next_health_schema(lambda f: f.append(
        {"name": "blob", "type": {"type": "fixed", "name": "Blob", "size": 4}})), "not supported"),
    (lambda: next_health_schema(lambda f: f.append(
        {"name": "when", "type": {"type": "int", "logicalType": "date"}, "default": 0})), "logical type"),
    (lambda: {"type": "enum", "name": "HealthSignalMessage", "symbols": ["a"]}, "must be a record"),
])
def test_a_published_schema_is_checked_as_data(make, reason):
    schema = make()
    if reason is None:
        read_publication(*_record(schema))
        return
    with pytest.raises(SchemaError, match=reason):
        read_publication(*_record(schema))


def test_json_nested_beyond_the_bound_is_refused_before_parsing():
    key = b"0" * 16
    value = json.dumps({"fingerprint": "0" * 16, "record_name": RECORD, "version": 1,
                        "writer_schema": "[" * 100_000 + "]" * 100_000}).encode()
    with pytest.raises(SchemaError, match="nested"):
        read_publication(key, value)


def test_the_key_and_the_name_must_be_the_schemas_own():
    schema = next_health_schema()
    with pytest.raises(SchemaError, match="fingerprint"):
        read_publication(*_record(schema, fingerprint="00112233aabbccdd"))
    key, value = _record(schema)
    with pytest.raises(SchemaError, match="not the record's fingerprint"):
        read_publication(b"ffffffffffffffff", value)
    with pytest.raises(SchemaError, match="announced as EpochCompletedMessage"):
        read_publication(*_record(schema, record_name="EpochCompletedMessage"))
    with pytest.raises(SchemaError, match="not a schema-log record"):
        read_publication(key, b'{"fingerprint": 1}')
    with pytest.raises(SchemaError, match="too large"):
        read_publication(key, b" " * (1024 * 1024))


def test_the_generated_decoders_refuse_a_name_that_is_not_an_identifier():
    # Defence in depth: even without the log's checks, a field name never reaches generated code as code.
    schema = _with_field_name(INJECTION)
    with pytest.raises(SchemaError, match="not a safe SQL identifier"):
        compile_decoder(schema, NoColumns(), HEADER_LEN)
    with pytest.raises(SchemaError, match="not a safe SQL identifier"):
        compile_validator(schema, HEADER_LEN)


# -- consumers one version behind ----------------------------------------------------------------
def test_an_event_of_a_newer_schema_is_unknown_without_the_schema_log(tmp_path):
    ahead, _ = _ahead(tmp_path)
    with pytest.raises(UnknownSchemaError, match="unknown writer schema fingerprint"):
        SingleObjectCodec().decode(HEALTH, _next_event(ahead))


def test_a_consumer_resolves_a_newer_writer_schema_from_the_log_and_reads_it_with_its_own(tmp_path):
    ahead, record = _ahead(tmp_path)
    today = SingleObjectCodec()
    log = FakeSchemaLog(record)
    today.use_schema_log(log)
    today.use_schema_log(log)  # attached once
    events = [_next_event(ahead, epoch=e, execution_latency=99.0) for e in range(5)]
    messages = [today.decode(HEALTH, value) for value in events]
    assert [m.payload.epoch for m in messages] == list(range(5))
    assert all(getattr(m.payload, DROPPED) == 0.0 for m in messages)  # not written: today's default
    assert not hasattr(messages[0].payload, ADDED)  # added by the writer, not read by today's reader
    assert messages[0].schema_version == ahead.store.version(RECORD) == today.store.version(RECORD) + 1
    assert log.refreshes == 1  # learned once, then known


def test_upgraded_consumers_still_read_the_old_events(tmp_path):
    ahead, _ = _ahead(tmp_path)
    sent = message_for(HEALTH)
    record = ahead.decode_record(HEALTH, SingleObjectCodec().encode(HEALTH, sent))
    assert record["event_id"] == sent.event_id
    assert record["payload"]["epoch"] == sent.payload.epoch
    assert record["payload"][ADDED] == 0.0  # not written by the old producer: the new reader's default
    assert DROPPED not in record["payload"]


def test_a_published_schema_the_reader_cannot_read_is_dead_lettered_with_the_reason(tmp_path):
    def retype(fields):  # a type change: double -> string
        next(f for f in fields if f["name"] == "health_score")["type"] = "string"
        next(f for f in fields if f["name"] == "health_score")["default"] = "1"

    ahead, record = _ahead(tmp_path, next_health_schema(retype))
    today = SingleObjectCodec()
    today.use_schema_log(FakeSchemaLog(record))
    fingerprint = bytes.fromhex(record[0].decode())
    event = b"\xc3\x01" + fingerprint + b"\x00"
    with pytest.raises(UnknownSchemaError, match="cannot read it: .*health_score"):
        today.decode(HEALTH, event)


def test_a_published_schema_of_another_record_does_not_belong_on_the_topic(tmp_path):
    ahead, record = _ahead(tmp_path)
    today = SingleObjectCodec()
    today.use_schema_log(FakeSchemaLog(record))
    epoch = topic_spec("system.events.epoch")
    with pytest.raises(UnknownSchemaError, match="does not belong on system.events.epoch"):
        today.decode(epoch, _next_event(ahead))


def test_nissa_stores_events_of_a_newer_schema_in_todays_columns(tmp_path):
    from tests.unit.test_nissa_batch import FakeMessage

    ahead, record = _ahead(tmp_path)
    tables = {t.record_name: t for t in sink_tables(SchemaStore())}
    routes = {spec.name: (spec, tables["DeadLetter"] if spec.raw else tables[spec.record_name])
              for spec in data_topics()}
    values = [_next_event(ahead, epoch=e) for e in range(4)] + [SingleObjectCodec().encode(HEALTH, message_for(HEALTH))]
    messages = [FakeMessage(HEALTH.name, 0, i, v) for i, v in enumerate(values)]

    without = Batch(routes, Decoders(SchemaStore()))
    without.add(messages)
    today = without.drain()  # today's sink without the schema log: every newer event dead-lettered
    assert sum(t.num_rows for t in today["health_signal"]) == 1
    assert sum(t.num_rows for t in today["dead_letters"]) == 4
    assert "unknown writer schema fingerprint" in today["dead_letters"][0].column("reason")[0].as_py()

    batch = Batch(routes, Decoders(SchemaStore(), FakeSchemaLog(record)))
    batch.add(messages)
    out = batch.drain()
    assert "dead_letters" not in out
    rows = [row for table in out["health_signal"] for row in table.to_pylist()]
    assert sorted(r["epoch"] for r in rows if r["sender_id"] == "v-next") == [0, 1, 2, 3]
    assert all(r[DROPPED] == 0.0 for r in rows if r["sender_id"] == "v-next")
    assert len(rows) == 5


def test_the_schema_log_is_registered_compacted_and_is_not_an_event_topic():
    spec = topic_spec("_esper_schemas", "p.")
    assert spec.name == "p._esper_schemas" and spec.topic_configs()["cleanup.policy"] == "compact"
    assert spec.internal and topic_spec("_esper_schemas") in TOPICS
    assert "_esper_schemas" not in [s.name for s in data_topics()]
    assert "_esper_schemas" not in [s.name for s in avro_topics()]
    assert message_for(HEALTH).topic == HEALTH.name
