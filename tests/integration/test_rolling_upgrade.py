"""A rolling upgrade on a real broker: a producer one schema version ahead beside today's consumers.

The producer upgraded first (HealthSignal with a field added with a default and an optional
one dropped) publishes its writer schema on the schema log, then its events; today's
consumers (an ``OonaConsumer`` as the services use it, and Nissa's sink) read every event, none
dead-lettered; then the consumers are upgraded and still read the old events.
"""

from __future__ import annotations

import uuid

import duckdb
import pytest
from pydantic import create_model

from contracts import HealthSignal
from services.nissa.replay import replay_from_kafka
from services.nissa.sink import NissaSink
from services.oona import clients, schema_log, schema_store
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.published_schemas import read_publication
from services.oona.schema_store import SchemaStore
from services.oona.topic_registry import topic_spec
from tests.fixtures.schema_ahead import ADDED, DROPPED, RECORD, schemas_one_version_ahead
from tests.integration.conftest import consume_until, read_raw
from tests.samples import health_signal

pytestmark = pytest.mark.integration

HealthSignalNext = create_model("HealthSignalNext", __base__=HealthSignal, gradient_variance=(float, 0.0))
OLD, NEW = 4, 6


def test_producers_first_then_consumers(esper_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(schema_store, "_PUBLISHED", {})  # this process knows no published schema yet
    kafka = esper_settings.kafka
    health, dlq = topic_spec("telemetry.seed.health", kafka.topic_prefix), topic_spec("esper.dlq", kafka.topic_prefix)

    today = OonaProducer(kafka, SingleObjectCodec())
    today.publish_many(health, [health.message_type(sender_id="v-today", topic=health.name, run_id="run-up",
                                                    payload=health_signal(epoch=e)) for e in range(OLD)])
    today.flush()

    ahead_codec = SingleObjectCodec(SchemaStore(schemas_one_version_ahead(tmp_path / "schemas")))
    ahead = OonaProducer(kafka, ahead_codec)
    for e in range(NEW):
        payload = HealthSignalNext(**health_signal(epoch=OLD + e).model_dump() | {"gradient_variance": 0.5,
                                                                                   DROPPED: 42.0})
        ahead.publish(health, health.message_type(sender_id="v-next", topic=health.name, run_id="run-up",
                                                  payload=payload))
    ahead.flush()

    # The newer schema went to the schema log before its first event.
    log_records = read_raw(kafka, kafka.topic_prefix + "_esper_schemas", 2)
    published = [read_publication(m.key(), m.value()) for m in log_records]
    assert {(w.record_name, w.version) for w in published} == {
        (RECORD, SchemaStore().version(RECORD)), (RECORD, ahead_codec.store.version(RECORD))}

    # Today's service consumer: every event processed, none dead-lettered.
    consumer = OonaConsumer(kafka, SingleObjectCodec(), group_id=f"up-{uuid.uuid4().hex[:8]}", topics=[health],
                            dead_letters=today, dlq_topic=dlq.name)
    try:
        got = consume_until(consumer, OLD + NEW)
        consumer.commit()
    finally:
        consumer.close()
    assert consumer.dead_lettered == 0
    assert [d.message.payload.epoch for d in got] == list(range(OLD + NEW))
    newer = [d.message for d in got if d.message.sender_id == "v-next"]
    assert len(newer) == NEW
    assert all(m.payload.execution_latency == 0.0 for m in newer)  # dropped by the writer: today's default
    assert {m.schema_version for m in newer} == {ahead_codec.store.version(RECORD)}

    # Today's Nissa sink: every event in today's columns, no dead letters. (It learns from the log itself,
    # as the sink's own process would: nothing the consumer above learned is left in this process.)
    monkeypatch.setattr(schema_store, "_PUBLISHED", {})
    monkeypatch.setattr(schema_log, "_READERS", {})
    db = tmp_path / "nissa.duckdb"
    sink = NissaSink(kafka, db)
    sink.start()
    try:
        sink.run_until_caught_up(60)
    finally:
        sink.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(f"SELECT sender_id, epoch, {DROPPED} FROM health_signal ORDER BY epoch").fetchall()
        dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()
    assert dead == 0
    assert [r[1] for r in rows] == list(range(OLD + NEW))
    assert {r[2] for r in rows if r[0] == "v-next"} == {0.0}

    # `esper replay` of the run from Kafka is a consumer too: it resolves the newer writer from the log.
    monkeypatch.setattr(schema_store, "_PUBLISHED", {})
    monkeypatch.setattr(schema_log, "_READERS", {})
    replayed = tmp_path / "replay.duckdb"
    replay_from_kafka(kafka, "run-up", replayed)
    con = duckdb.connect(str(replayed), read_only=True)
    try:
        epochs = [r[0] for r in con.execute("SELECT epoch FROM health_signal ORDER BY epoch").fetchall()]
        dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()
    assert (epochs, dead) == (list(range(OLD + NEW)), 0)

    # The consumers upgraded: a reader with the new schema reads the old events and the new ones.
    upgraded = SingleObjectCodec(ahead_codec.store)
    records = [upgraded.decode_record(health, m.value()) for m in read_raw(kafka, health.name, OLD + NEW)]
    assert len(records) == OLD + NEW
    assert sorted(r["payload"]["epoch"] for r in records) == list(range(OLD + NEW))
    assert {r["payload"][ADDED] for r in records if r["sender_id"] == "v-today"} == {0.0}  # the new default
    assert {r["payload"][ADDED] for r in records if r["sender_id"] == "v-next"} == {0.5}


def test_the_first_producer_creates_a_missing_schema_log_compacted(kafka_settings):
    from confluent_kafka.admin import ConfigResource

    from services.oona.admin import delete_topics
    from services.oona.schema_log import SchemaLogReader

    kafka = kafka_settings.model_copy(update={"topic_prefix": f"sl.{uuid.uuid4().hex[:8]}."})
    topic = kafka.topic_prefix + "_esper_schemas"
    health = topic_spec("telemetry.seed.health", kafka.topic_prefix)
    producer = OonaProducer(kafka, SingleObjectCodec())
    try:
        producer.announce(health)
        producer.announce(health)  # once per record type
        [record] = read_raw(kafka, topic, 1)
        assert read_publication(record.key(), record.value()).record_name == RECORD
        client = clients.admin(kafka)
        [future] = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        assert future.result(timeout=30)["cleanup.policy"].value == "compact"
        reader = SchemaLogReader(kafka)
        assert reader.refresh(SchemaStore().fingerprint(RECORD))  # what the producer published is learned
        assert not reader.refresh(b"\x00" * 8)  # on no log: read to its end, still unknown
        assert reader.rejected == 0
        reader.close()
    finally:
        producer.close()
        delete_topics(kafka, [topic])
