"""Batching, dead letters, the atomic store and the views, without a broker."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from contracts.dead_letter import DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, DLQ_HEADER_TOPIC
from services.core.errors import DecodeError
from services.nissa.batch import Decoders
from services.nissa.store import NissaStore
from services.oona.topic_registry import all_topics, topic_spec
from tests.samples import health_signal, message_for
from tests.unit.nissa_fakes import BY_RECORD, CODEC, TABLES, new_batch
from tests.unit.nissa_fakes import Message as FakeMessage


def encoded(spec, message=None) -> bytes:
    return CODEC.encode(spec, message or message_for(spec))


def test_messages_of_every_topic_become_rows_of_their_tables():
    batch = new_batch()
    messages = [FakeMessage(spec.name, 1, i, encoded(spec)) for i, spec in enumerate(all_topics()) if not spec.raw]
    batch.add(messages)
    assert batch.size == len(messages)
    out = batch.drain()
    assert batch.size == 0 and batch.drain() == {}
    assert sorted(out) == sorted(t.name for t in TABLES if t.name != "dead_letters")
    for parts in out.values():
        assert sum(p.num_rows for p in parts) == 1
    health = out["health_signal"][0].to_pylist()[0]
    assert health["layer_id"] == 7 and health["kafka_partition"] == 1 and health["run_id"] == "run-sample"


def test_undecodable_values_become_dead_letters_and_good_ones_survive():
    spec = topic_spec("telemetry.seed.health")
    good = encoded(spec)
    other_topic = encoded(topic_spec("system.events.epoch"))
    unknown = good[:2] + b"\x00" * 8 + good[10:]
    values = [good, b"garbage", None, other_topic, unknown, good[:-2], good]
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, i, v) for i, v in enumerate(values)])
    out = batch.drain()
    assert sum(p.num_rows for p in out["health_signal"]) == 2
    dead = pa.concat_tables(out["dead_letters"]).to_pylist()
    assert sorted(d["source_offset"] for d in dead) == [1, 2, 3, 4, 5]
    assert {d["origin"] for d in dead} == {"nissa"} and all(d["reason"] for d in dead)
    reasons = {d["source_offset"]: d["reason"] for d in dead}
    assert "not Avro single-object" in reasons[1] and "unknown writer schema" in reasons[4]
    assert "does not belong" in reasons[3] and "corrupt Avro body" in reasons[5]


def test_a_batch_of_only_corrupt_bodies_is_all_dead_letters():
    spec = topic_spec("telemetry.seed.health")
    good = encoded(spec)
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, i, good[: -1 - i]) for i in range(4)])
    out = batch.drain()
    assert sum(t.num_rows for t in out.get("health_signal", [])) == 0
    assert out["dead_letters"][0].num_rows == 4


def test_dlq_messages_keep_their_bytes_and_headers():
    dlq = topic_spec("esper.dlq")
    headers = [(DLQ_HEADER_TOPIC, b"telemetry.seed.health"), (DLQ_HEADER_OFFSET, b"41"), (DLQ_HEADER_REASON, b"bad")]
    batch = new_batch()
    batch.add([FakeMessage(dlq.name, 0, 5, b"\x01\x02", b"key", headers)])
    row = batch.drain()["dead_letters"][0].to_pylist()[0]
    assert row["origin"] == "dlq" and row["source_offset"] == 41 and row["reason"] == "bad"
    assert row["original_value"] == b"\x01\x02" and row["kafka_offset"] == 5


def test_mixed_topics_in_one_consume_are_grouped():
    health, epoch = topic_spec("telemetry.seed.health"), topic_spec("system.events.epoch")
    batch = new_batch()
    messages = []
    for i in range(10):
        spec = health if i % 3 else epoch
        messages.append(FakeMessage(spec.name, i % 2, i, encoded(spec)))
    batch.add(messages)
    out = batch.drain()
    assert out["health_signal"][0].num_rows == 6 and out["epoch_completed"][0].num_rows == 4
    assert out["health_signal"][0].column("kafka_offset").to_pylist() == [1, 2, 4, 5, 7, 8]


def test_store_writes_rows_and_offsets_in_one_transaction(tmp_path):
    spec = topic_spec("telemetry.seed.health")
    store = NissaStore(tmp_path / "nissa.duckdb", TABLES)
    store.create_schema()
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, i, encoded(spec, message_for(spec))) for i in range(5)])
    assert store.write(batch.drain(), {(spec.name, 0): 5}) == 5
    assert store.offsets() == {(spec.name, 0): 5}
    broken = {"health_signal": [pa.table({"nope": [1]})]}  # a batch DuckDB rejects: nothing of it may stay
    with pytest.raises(duckdb.Error):
        store.write(broken, {(spec.name, 0): 99})
    assert store.offsets() == {(spec.name, 0): 5}
    store.close()
    con = duckdb.connect(str(tmp_path / "nissa.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM health_signal").fetchone() == (5, 5)


def test_views_join_the_adaptation_history(tmp_path):
    store = NissaStore(tmp_path / "nissa.duckdb", TABLES)
    store.create_schema()
    batch = new_batch()
    messages = [FakeMessage(spec.name, 0, 0, encoded(spec)) for spec in all_topics() if not spec.raw]
    health = topic_spec("telemetry.seed.health")
    messages += [FakeMessage(health.name, 0, i, encoded(health, health.message_type(
        sender_id="t", topic=health.name, run_id="run-sample", payload=health_signal(epoch=1, seed_idx=i))))
        for i in range(1, 4)]
    transitions = topic_spec("lifecycle.seed.transitions")
    sample = message_for(transitions)
    with_kernel = sample.model_copy(
        update={"payload": sample.payload.model_copy(update={"kernel_id": "k-1", "epoch": 7})}
    )
    messages.append(FakeMessage(transitions.name, 0, 1, encoded(transitions, with_kernel)))
    batch.add(messages)
    store.write(batch.drain(), {})
    store.close()
    con = duckdb.connect(str(tmp_path / "nissa.duckdb"), read_only=True)
    history = con.execute("SELECT decision_id, command_id, action, field_outcome, metric_delta "
                          "FROM adaptation_history").fetchall()
    assert len(history) == 1 and history[0][:4] == ("d-1", "c-1", "germinate", "fossilized")
    assert history[0][4] == pytest.approx(0.05)
    run = con.execute("SELECT run_id, name, epochs, seeds_fossilized, final_validation_accuracy FROM runs").fetchall()
    assert run == [("run-sample", "digits-mlp", 1, 2, 1.0)]
    layers = con.execute("SELECT epoch, signals, seeds FROM layer_health ORDER BY epoch").fetchall()
    assert layers == [(0, 1, 1), (1, 3, 3)]
    assert con.execute("SELECT blueprint_id, decisions, commands FROM blueprint_history").fetchall() == [("bp-x", 1, 1)]
    assert con.execute("SELECT count(*) FROM dlq_summary").fetchone() == (0,)
    # A transition without a command id whose seed and kernel lead back to the germinate command (epoch 3).
    timeline = con.execute("SELECT epoch, germinated_by, decision_id, blueprint_id FROM seed_timeline "
                           "ORDER BY epoch").fetchall()
    assert timeline == [(7, "c-1", "d-1", "bp-x"), (9, None, None, None)]


def test_after_a_failed_commit_nothing_later_commits():
    """A later batch committed after a failed one would move the offsets past lost rows: a gap."""
    from services.nissa.sink import Committer

    class Store:
        def __init__(self):
            self.written = []

        def write(self, tables, offsets):
            if offsets == {"second": 2}:
                raise OSError("disk full")
            self.written.append(offsets)
            return 1

    class Identity:
        def decode(self, pending):
            return pending

    store = Store()
    committer = Committer(Identity(), store, None)
    committer.submit(({}, {"first": 1}))
    committer.submit(({}, {"second": 2}))
    with pytest.raises(OSError, match="disk full"):
        committer.wait()
    with pytest.raises(OSError):
        committer.submit(({}, {"third": 3}))
    committer.stop()
    assert store.written == [{"first": 1}]


# -- no value stops the sink (issue 11): regression tests for two crash loops ----------------------
HEADER = 10
WIDE_LENGTH = bytes.fromhex("feffffffffffffffff01")  # 2**63 - 1 as a zig-zag varint: a string length


def test_a_string_length_of_2_63_minus_1_is_one_bad_row_in_the_columnar_decoder():
    """It wrapped the columnar decoder's position negative: IndexError, the sink's crash loop."""
    spec = topic_spec("telemetry.seed.health")
    good = encoded(spec)
    assert good[HEADER] < 0x80  # the first string's (event_id's) length is one byte
    bad = good[:HEADER] + WIDE_LENGTH + good[HEADER + 1 :]
    columnar = Decoders(CODEC.store).for_value(good[:HEADER], BY_RECORD[spec.record_name]).columnar
    assert columnar is not None
    _, ok = columnar.decode([good, bad, good])
    assert ok.tolist() == [True, False, True]


def test_a_string_length_of_2_63_minus_1_is_dead_lettered_and_the_good_events_around_it_land():
    spec = topic_spec("telemetry.seed.health")
    good = encoded(spec)
    bad = good[:HEADER] + WIDE_LENGTH + good[HEADER + 1 :]
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, i, v) for i, v in enumerate([good, good, bad, good, good])])
    out = batch.drain()
    stored = pa.concat_tables(out["health_signal"])
    assert sorted(stored.column("kafka_offset").to_pylist()) == [0, 1, 3, 4]
    (dead,) = pa.concat_tables(out["dead_letters"]).to_pylist()
    assert dead["source_offset"] == 2 and dead["origin"] == "nissa" and dead["error_type"] == "DecodeError"
    assert "corrupt Avro body" in dead["reason"] and "length" in dead["reason"]


def _wide_varint_value(spec, message) -> bytes:
    """``message`` with its payload's epoch (a long) written as a 10-byte varint above 2**64."""
    data = encoded(spec, message)
    epoch = bytes([2 * message.payload.epoch])  # zig-zag of a small epoch: one byte
    # SeedTransition's payload: ..., layer_name, from_state, to_state (one-byte enum indexes), epoch
    at = data.index(b"\x0cbody.0") + 7 + 2
    assert data[at : at + 1] == epoch
    return data[:at] + b"\xff" * 9 + b"\x7f" + data[at + 1 :]


def test_a_varint_above_2_64_is_dead_lettered_on_a_row_decoded_topic():
    """The row decoder took it; the Arrow conversion then raised OverflowError outside the per-row try."""
    spec = topic_spec("lifecycle.seed.transitions")
    sample = message_for(spec)
    bad = _wide_varint_value(spec, sample)
    good = encoded(spec)
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, i, v) for i, v in enumerate([good, bad, good])])
    out = batch.drain()
    assert pa.concat_tables(out["seed_transition"]).column("kafka_offset").to_pylist() == [0, 2]
    (dead,) = pa.concat_tables(out["dead_letters"]).to_pylist()
    assert dead["source_offset"] == 1 and "64 bits" in dead["reason"]
    decoders = Decoders(CODEC.store).for_value(good[:HEADER], BY_RECORD[spec.record_name])
    assert decoders.columnar is None  # arrays in the record: the per-event row decoder
    with pytest.raises(DecodeError, match="64 bits"):
        decoders.row(bad, 0, 0)
    with pytest.raises(DecodeError):  # and every service dead-letters the same bytes
        CODEC.decode_record(spec, bad)


def test_a_decoded_row_that_does_not_fit_its_column_is_dead_lettered_alone():
    """Belt and braces behind the decoders' range checks: Arrow's verdict is per row too."""
    spec = topic_spec("telemetry.seed.health")
    table = BY_RECORD[spec.record_name]
    good = encoded(spec)
    real = Decoders(CODEC.store).for_value(good[:HEADER], table).row
    layer_id = table.column_names.index("layer_id")

    def decode(value, partition, offset):
        row = list(real(value, partition, offset))
        if offset == 1:
            row[layer_id] = 2**70
        return tuple(row)

    dead: list[tuple] = []
    messages = [FakeMessage(spec.name, 0, i, good) for i in range(3)]
    stored = new_batch()._rows(decode, table, messages, [good] * 3, dead)
    assert stored.column("kafka_offset").to_pylist() == [0, 2]
    assert len(dead) == 1 and dead[0][2] == 1 and "does not fit" in dead[0][3]


def test_when_the_columnar_decoder_gives_up_on_a_batch_every_value_is_decoded_alone(monkeypatch):
    spec = topic_spec("telemetry.seed.health")
    good = encoded(spec)
    bad = good[:HEADER] + WIDE_LENGTH + good[HEADER + 1 :]
    batch = new_batch()
    columnar = batch.decoders.for_value(good[:HEADER], BY_RECORD[spec.record_name]).columnar

    def give_up(values):
        raise DecodeError("columnar decoding failed: a test says so")

    monkeypatch.setattr(columnar, "decode", give_up)
    batch.add([FakeMessage(spec.name, 0, i, v) for i, v in enumerate([good, bad, good])])
    out = batch.drain()
    assert pa.concat_tables(out["health_signal"]).column("kafka_offset").to_pylist() == [0, 2]
    assert [d["source_offset"] for d in pa.concat_tables(out["dead_letters"]).to_pylist()] == [1]
