"""Wire codecs: round trips of every contract, the fast encoder against fastavro, decode errors."""

from __future__ import annotations

import io
import random

import fastavro
import pytest

from contracts import HealthSignal, OonaMessage
from services.core.errors import ConfigurationError, ContractViolationError, DecodeError, UnknownSchemaError
from services.oona.avro import SINGLE_OBJECT_MAGIC, compile_encoder, encode_long
from services.oona.codec import ConfluentCodec, SingleObjectCodec, make_codec
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import avro_topics, topic_spec
from tests.samples import all_messages, message_for

STORE = SchemaStore()
CODEC = SingleObjectCodec(STORE)
SPECS = {spec.name: spec for spec in avro_topics()}
HEALTH = topic_spec("telemetry.seed.health")


def _same_content(a: OonaMessage, b: OonaMessage) -> None:
    assert a.model_dump(exclude={"schema_version"}) == b.model_dump(exclude={"schema_version"})


@pytest.mark.parametrize("spec, message", all_messages(), ids=lambda v: getattr(v, "name", ""))
def test_single_object_round_trip(spec, message):
    data = CODEC.encode(spec, message)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == STORE.fingerprint(spec.record_name)
    decoded = CODEC.decode(spec, data)
    _same_content(decoded, message)
    assert decoded.schema_version == STORE.version(spec.record_name)


@pytest.mark.parametrize("spec, message", all_messages(), ids=lambda v: getattr(v, "name", ""))
def test_fast_encoder_writes_exactly_what_fastavro_writes(spec, message):
    record = message.model_dump()
    record["schema_version"] = 7
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, STORE.reader(spec.record_name), record)
    fast = compile_encoder(STORE.raw(spec.record_name), {"schema_version": 7})
    assert fast(message) == reference.getvalue()


@pytest.mark.parametrize(
    "n", [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 2**21, 2**28, 2**35, -(2**40), 2**62, 2**63 - 1, -(2**63)]
)
def test_varints_match_fastavro(n):
    out = io.BytesIO()
    fastavro.schemaless_writer(out, {"type": "long"}, n)
    assert encode_long(n) == out.getvalue()


def test_varints_match_fastavro_on_random_values():
    rng = random.Random(1)
    for _ in range(2000):
        n = rng.randint(-2**63, 2**63 - 1) >> rng.randint(0, 62)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, {"type": "long"}, n)
        assert encode_long(n) == out.getvalue(), n


BOUNDARY_SIGNALS = [
    dict(dead_neuron_ratio=0.0, avg_correlation=-1.0, health_score=0.0, activation_variance=0.0),
    dict(dead_neuron_ratio=1.0, avg_correlation=1.0, health_score=1.0, activation_variance=1e300),
    dict(
        dead_neuron_ratio=0.5, avg_correlation=0.0, health_score=0.5, activation_variance=5e-324, layer_name="é/ü" * 40
    ),
]


@pytest.mark.parametrize("fields", BOUNDARY_SIGNALS)
def test_boundary_values_round_trip(fields):
    payload = HealthSignal(layer_id=2**31 - 1, seed_idx=2**40, epoch=0, error_count=2**62, total_seeds=1, **fields)
    message = HEALTH.message_type(sender_id="t", topic=HEALTH.name, run_id="r" * 80, payload=payload)
    _same_content(CODEC.decode(HEALTH, CODEC.encode(HEALTH, message)), message)


def test_random_bytes_are_a_decode_error():
    with pytest.raises(DecodeError, match="not Avro single-object encoded"):
        CODEC.decode(HEALTH, b"\x00\x01garbage")


def test_unknown_fingerprint():
    data = bytearray(CODEC.encode(HEALTH, message_for(HEALTH)))
    data[2:10] = b"\xff" * 8
    with pytest.raises(UnknownSchemaError, match="unknown writer schema fingerprint ffffffffffffffff"):
        CODEC.decode(HEALTH, bytes(data))


def test_a_record_on_the_wrong_topic():
    epoch = SPECS["system.events.epoch"]
    data = CODEC.encode(epoch, message_for(epoch))
    with pytest.raises(UnknownSchemaError, match="does not belong on telemetry.seed.health"):
        CODEC.decode(HEALTH, data)


def test_truncated_and_padded_bodies():
    data = CODEC.encode(HEALTH, message_for(HEALTH))
    with pytest.raises(DecodeError, match="corrupt Avro body"):
        CODEC.decode(HEALTH, data[:-20])
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode(HEALTH, data + b"\x00\x00")


def test_schema_valid_but_contract_invalid():
    message = message_for(HEALTH)
    bad = message.model_copy(update={"payload": message.payload.model_copy(update={"health_score": 1.5})})
    data = CODEC.encode(HEALTH, bad)  # Avro accepts any double ...
    with pytest.raises(ContractViolationError, match="payload.health_score"):
        CODEC.decode(HEALTH, data)  # ... the contract does not


@pytest.mark.parametrize("spec, message", all_messages(), ids=lambda v: getattr(v, "name", ""))
def test_confluent_wire_format_with_mock_registry(spec, message):
    codec = make_codec("mock://esper-tests", STORE)
    assert isinstance(codec, ConfluentCodec)
    data = codec.encode(spec, message)
    assert data[0] == 0 and len(data) > 5  # magic byte 0 + 4-byte schema id
    _same_content(codec.decode(spec, data), message)


def test_confluent_codec_refuses_single_object_bytes():
    codec = ConfluentCodec("mock://esper-tests-2", STORE)
    with pytest.raises(DecodeError, match="Confluent wire format"):
        codec.decode(HEALTH, CODEC.encode(HEALTH, message_for(HEALTH)))


@pytest.mark.parametrize("url", ["registry:8081", "ftp://x", "localhost"])
def test_bad_registry_url_is_a_configuration_error(url):
    with pytest.raises(ConfigurationError, match="SCHEMA_REGISTRY_URL must start with"):
        ConfluentCodec(url, STORE)


def test_unreachable_registry_is_a_configuration_error():
    codec = ConfluentCodec("http://127.0.0.1:9", STORE)
    with pytest.raises(ConfigurationError, match="unreachable"):
        codec.encode(HEALTH, message_for(HEALTH))
