"""Partition counts on the real broker: a scaled topic with fewer partitions than the settings ask for is refused
in one line and left alone, given more only with ``grow`` (``esper topics create --grow-partitions``), and never
shrunk; what was written before the growth stays readable where it was."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from services.core.errors import ConfigurationError
from services.oona import clients
from services.oona.admin import delete_topics, ensure_topics
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec
from tests.esper_cli import esper_env, run_esper


@pytest.fixture
def run_scoped_spec(kafka_settings: KafkaSettings):
    spec = dataclasses.replace(topic_spec("telemetry.seed.health"), name=f"test.{uuid.uuid4().hex[:10]}.grow")
    assert spec.scaling == "run"
    yield spec
    delete_topics(kafka_settings, [spec.name])


def _partitions(settings: KafkaSettings, name: str) -> int:
    return len(clients.admin(settings).list_topics(topic=name, timeout=10).topics[name].partitions)


def test_a_topic_is_grown_only_when_asked_and_never_shrunk(kafka_settings, run_scoped_spec):
    two = kafka_settings.model_copy(update={"run_partitions": 2})
    three = kafka_settings.model_copy(update={"run_partitions": 3})
    assert ensure_topics(two, [run_scoped_spec]) == [run_scoped_spec.name]
    assert _partitions(kafka_settings, run_scoped_spec.name) == 2

    with pytest.raises(ConfigurationError) as refused:
        ensure_topics(three, [run_scoped_spec])
    assert "has 2 partitions, the settings ask for 3" in str(refused.value)
    assert "--grow-partitions" in str(refused.value) and "\n" not in str(refused.value)
    assert _partitions(kafka_settings, run_scoped_spec.name) == 2  # refused: left as it was

    assert ensure_topics(three, [run_scoped_spec], grow=True) == []  # grown, not created
    assert _partitions(kafka_settings, run_scoped_spec.name) == 3
    assert ensure_topics(three, [run_scoped_spec]) == []  # the settings now match: nothing to do

    with pytest.raises(ConfigurationError, match="Kafka cannot remove partitions"):
        ensure_topics(two, [run_scoped_spec], grow=True)
    assert _partitions(kafka_settings, run_scoped_spec.name) == 3


def test_esper_topics_create_grow_partitions_end_to_end(kafka_bootstrap, tmp_path):
    prefix = f"grow.{uuid.uuid4().hex[:8]}."
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "ESPER_KAFKA__TOPIC_PREFIX": prefix,
           "ESPER_STATE_DIR": str(tmp_path)}
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    health = f"{prefix}telemetry.seed.health"
    try:
        created = run_esper("topics", "create", env=esper_env(**env, ESPER_KAFKA__RUN_PARTITIONS="2"), timeout=120)
        assert created.returncode == 0, created.stderr
        assert _partitions(settings, health) == 2

        refused = run_esper("topics", "create", env=esper_env(**env, ESPER_KAFKA__RUN_PARTITIONS="4"), timeout=120)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert "--grow-partitions" in refused.stderr
        assert _partitions(settings, health) == 2

        grown = run_esper("topics", "create", "--grow-partitions",
                          env=esper_env(**env, ESPER_KAFKA__RUN_PARTITIONS="4"), timeout=120)
        assert grown.returncode == 0, grown.stderr
        assert _partitions(settings, health) == 4
        work = f"{prefix}compilation.blueprint.submitted"
        assert _partitions(settings, work) == settings.work_partitions  # only the run-scoped topics grew
    finally:
        delete_topics(settings, [spec.name for spec in all_topics(prefix)])
