"""The Avro layer's row decoder and vectorised columnar decoder fill Nissa's tables as fastavro reads (no broker)."""

from __future__ import annotations

import io

import fastavro
import pytest

from services.core.errors import DecodeError
from services.nissa.batch import Decoders
from services.nissa.tables import arrow_batch, row_from_record, table_for
from services.oona.avro import HEADER_LEN, SINGLE_OBJECT_MAGIC, compile_decoder
from services.oona.avro.columnar import columnar_decoder
from services.oona.codec import SingleObjectCodec, message_to_record
from services.oona.schema_store import history_versions, schema_fingerprint
from services.oona.topic_registry import avro_topics, topic_spec
from tests.samples import health_signal, message_for

CODEC = SingleObjectCodec()
STORE = CODEC.store
TABLES = {spec.record_name: table_for(spec, STORE) for spec in avro_topics()}


def variants(spec):
    """The sample plus envelope variants (null run id, a trace id, non-ASCII text)."""
    out = [message_for(spec), message_for(spec, run_id=None, trace_id="trace-1"),
           message_for(spec, run_id="run-é-ü-漢字", trace_id="")]
    if spec.payload.__name__ == "HealthSignal":
        # String lengths around the 12-byte inline limit of string views; 2- to 10-byte varints.
        for i, (name, layer_id) in enumerate([("", 0), ("a" * 11, 200), ("b" * 12, 70_000), ("c" * 13, -5),
                                              ("d" * 40, 2**40), ("é" * 7, 2**62), ("x", -(2**63))]):
            payload = health_signal(epoch=i, seed_idx=i).model_copy(update={"layer_name": name, "layer_id": layer_id})
            out.append(spec.message_type(sender_id="tests", topic=spec.name, run_id="r" * i, payload=payload))
    return out


def reference_rows(spec, encoded, partition=3):
    table = TABLES[spec.record_name]
    return [row_from_record(table, CODEC.decode_record(spec, data), partition, offset)
            for offset, data in enumerate(encoded)]


@pytest.mark.parametrize("spec", avro_topics(), ids=lambda s: s.name)
def test_row_decoder_matches_fastavro_on_every_sample(spec):
    table = TABLES[spec.record_name]
    decode = compile_decoder(STORE.raw(spec.record_name), table, HEADER_LEN)
    encoded = [CODEC.encode(spec, m) for m in variants(spec)]
    rows = [decode(data, 3, offset) for offset, data in enumerate(encoded)]
    assert arrow_batch(table, rows).to_pylist() == arrow_batch(table, reference_rows(spec, encoded)).to_pylist()


@pytest.mark.parametrize("spec", avro_topics(), ids=lambda s: s.name)
def test_columnar_decoder_matches_fastavro_where_it_applies(spec):
    table = TABLES[spec.record_name]
    columnar = columnar_decoder(STORE.raw(spec.record_name), table, HEADER_LEN)
    scalar_only = all(not c.sql_type.endswith("[]") and not c.sql_type.startswith(("MAP", "STRUCT"))
                      for c in table.columns)
    assert (columnar is not None) == scalar_only
    if columnar is None:
        return
    encoded = [CODEC.encode(spec, m) for m in variants(spec)]
    arrays, ok = columnar.decode(encoded)
    assert ok.all()
    expected = arrow_batch(table, reference_rows(spec, encoded)).drop_columns(["kafka_partition", "kafka_offset"])
    assert [a.to_pylist() for a in arrays] == [expected.column(i).to_pylist() for i in range(expected.num_columns)]


def single_object(raw_schema: dict, record: dict) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(raw_schema), record)
    return SINGLE_OBJECT_MAGIC + schema_fingerprint(raw_schema) + body.getvalue()


@pytest.mark.parametrize("spec", avro_topics(), ids=lambda s: s.name)
def test_every_historical_writer_schema_decodes_into_todays_columns(spec):
    table = TABLES[spec.record_name]
    decoders = Decoders(STORE)
    record = message_to_record(message_for(spec))
    for version, raw in history_versions(STORE.schemas_dir, spec.record_name):
        data = single_object(raw, record)
        found = decoders.for_value(data[:HEADER_LEN], table)
        assert found.version == version
        expected = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), fastavro.parse_schema(raw),
                                              STORE.reader(spec.record_name))
        want = arrow_batch(table, [row_from_record(table, expected, 0, 9)]).to_pylist()
        assert arrow_batch(table, [found.row(data, 0, 9)]).to_pylist() == want, f"v{version}"
        if found.columnar is not None:
            arrays, ok = found.columnar.decode([data])
            assert ok.all() and [a.to_pylist()[0] for a in arrays] == list(want[0].values())[:-2]


def test_an_older_writer_gets_the_readers_defaults():
    spec = topic_spec("library.kernels")
    table = TABLES[spec.record_name]
    versions = history_versions(STORE.schemas_dir, spec.record_name)
    assert len(versions) >= 2, "CompiledKernel has a v1 without the architecture field"
    v1 = versions[0][1]
    data = single_object(v1, message_to_record(message_for(spec)))
    row = Decoders(STORE).for_value(data[:HEADER_LEN], table).row(data, 0, 0)
    values = dict(zip(table.column_names, row, strict=True))
    assert values["architecture_layers"] is None and values["kernel_id"] == "k-1"


def corruptions(data: bytes) -> list[bytes]:
    return [data[:-3], data + b"\x00", data[:HEADER_LEN] + b"\xff" * 40, data[:HEADER_LEN],
            data[:HEADER_LEN] + b"\x07" + data[HEADER_LEN + 1 :]]  # odd (negative) string length


@pytest.mark.parametrize("name", ["telemetry.seed.health", "lifecycle.seed.transitions"])
def test_corrupt_bodies_raise_or_are_flagged_never_crash(name):
    spec = topic_spec(name)
    table = TABLES[spec.record_name]
    data = CODEC.encode(spec, message_for(spec))
    decode = compile_decoder(STORE.raw(spec.record_name), table, HEADER_LEN)
    for bad in corruptions(data):
        with pytest.raises(DecodeError):
            decode(bad, 0, 0)
    columnar = columnar_decoder(STORE.raw(spec.record_name), table, HEADER_LEN)
    if columnar is not None:
        _, ok = columnar.decode([data, *corruptions(data), data])
        assert ok.tolist() == [True] + [False] * len(corruptions(data)) + [True]
