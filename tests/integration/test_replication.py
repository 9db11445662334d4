"""Replication on the real single broker: topics get the derived factor and min.insync.replicas, a factor the
cluster cannot hold is a one-line error before anything is created, and an existing topic with fewer copies than
wanted is refused and left as it was."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from services.core.errors import ConfigurationError
from services.oona import admin, clients
from services.oona.admin import delete_topics, ensure_topics, replication_factor_of
from services.oona.replication import Replication
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, all_topics, topic_spec
from tests.esper_cli import esper_env, run_esper


@pytest.fixture
def unique_spec(kafka_settings: KafkaSettings):
    spec = dataclasses.replace(topic_spec("telemetry.seed.health"), name=f"test.{uuid.uuid4().hex[:10]}.repl")
    yield spec
    delete_topics(kafka_settings, [spec.name])


def _replication_of(settings: KafkaSettings, spec: TopicSpec) -> tuple[int, str]:
    client = clients.admin(settings)
    factor = replication_factor_of(client.list_topics(timeout=10).topics[spec.name])
    resource = ConfigResource(ResourceType.TOPIC, spec.name)
    configs = client.describe_configs([resource], request_timeout=10)[resource].result(timeout=10)
    return factor, configs["min.insync.replicas"].value


def _topic_exists(settings: KafkaSettings, name: str) -> bool:
    return name in clients.admin(settings).list_topics(timeout=10).topics


def test_topics_on_one_broker_get_one_copy_and_one_in_sync_by_default(kafka_settings, unique_spec):
    assert kafka_settings.replication_factor is None
    assert ensure_topics(kafka_settings, [unique_spec]) == [unique_spec.name]
    assert _replication_of(kafka_settings, unique_spec) == (1, "1")
    assert ensure_topics(kafka_settings, [unique_spec]) == []  # idempotent: the same factor is fine


def test_a_factor_above_the_broker_count_is_a_one_line_error_and_creates_nothing(kafka_settings, unique_spec):
    wants_three = kafka_settings.model_copy(update={"replication_factor": 3})
    with pytest.raises(ConfigurationError) as caught:
        ensure_topics(wants_three, [unique_spec])
    assert str(caught.value).startswith("replication factor 3 is more than the cluster's 1 broker(s)")
    assert "\n" not in str(caught.value)
    assert not _topic_exists(kafka_settings, unique_spec.name)


def test_an_existing_topic_with_fewer_copies_is_refused_and_left_alone(kafka_settings, unique_spec, monkeypatch):
    ensure_topics(kafka_settings, [unique_spec])
    # One broker cannot hold factor 2: stand in for a deployment that wants 2 copies on a bigger cluster.
    monkeypatch.setattr(admin, "cluster_replication", lambda settings, brokers: Replication(2, 1))
    with pytest.raises(ConfigurationError,
                       match=f"topic {unique_spec.name} has replication factor 1, the replication_factor setting is 2"):
        ensure_topics(kafka_settings, [unique_spec])
    assert _replication_of(kafka_settings, unique_spec) == (1, "1")  # not recreated, not changed


def test_esper_status_shows_each_topics_replication(kafka_bootstrap, tmp_path):
    prefix = f"repl.{uuid.uuid4().hex[:8]}."
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(settings, all_topics(prefix))
    try:
        result = run_esper("status", "--json", env=esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                                                             ESPER_KAFKA__TOPIC_PREFIX=prefix,
                                                             ESPER_STATE_DIR=str(tmp_path)), timeout=60)
        assert result.stdout, result.stderr
        topics = {t["topic"]: t for t in json.loads(result.stdout)["topics"]}
        for spec in all_topics(prefix):
            assert topics[spec.name] == {"topic": spec.name, "factor": 1, "min_insync": "1", "under_replicated": 0}
        assert topics["__consumer_offsets"]["factor"] == 1
    finally:
        delete_topics(settings, [spec.name for spec in all_topics(prefix)])
