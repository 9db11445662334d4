"""Replication as a setting: derived from the broker count when unset, refused when the cluster cannot hold it,
and an existing topic with fewer copies is refused, never "fixed" (no broker needed)."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import PartitionMetadata
from pydantic import ValidationError

from services.cli.settings import load_settings
from services.cli.status import under_replicated
from services.core.errors import ConfigurationError
from services.oona.local_broker import LocalBrokerConfig, _server_properties
from services.oona.replication import Replication, check_existing, replication_for
from services.oona.settings import KafkaSettings
from tests.unit.test_settings_and_cli import _clean_env, run_cli


@pytest.mark.parametrize(
    "brokers, wanted",
    [(1, Replication(1, 1)), (2, Replication(1, 1)), (3, Replication(3, 2)), (5, Replication(3, 2))],
)
def test_unset_settings_are_derived_from_the_broker_count(brokers, wanted):
    assert replication_for(None, None, brokers) == wanted


@pytest.mark.parametrize(
    "factor, min_insync, brokers, wanted",
    [
        (1, None, 3, Replication(1, 1)),  # an explicit 1 on a big cluster is the operator's choice
        (2, None, 3, Replication(2, 1)),
        (5, None, 5, Replication(5, 2)),
        (3, 3, 3, Replication(3, 3)),
        (None, 1, 3, Replication(3, 1)),
    ],
)
def test_explicit_settings_win(factor, min_insync, brokers, wanted):
    assert replication_for(factor, min_insync, brokers) == wanted


def test_a_factor_above_the_broker_count_is_a_one_line_configuration_error():
    with pytest.raises(ConfigurationError) as caught:
        replication_for(3, None, brokers=1)
    message = str(caught.value)
    assert "replication factor 3 is more than the cluster's 1 broker(s)" in message
    assert "\n" not in message


def test_more_in_sync_copies_than_copies_is_refused():
    with pytest.raises(ConfigurationError, match="min.insync.replicas 2 is more than the replication factor 1"):
        replication_for(None, 2, brokers=1)
    with pytest.raises(ValidationError, match="min_insync_replicas 3 is more than replication_factor 2"):
        KafkaSettings(replication_factor=2, min_insync_replicas=3)
    with pytest.raises(ValidationError):
        KafkaSettings(replication_factor=0)


def test_an_existing_topic_with_fewer_copies_is_refused_naming_topic_factor_and_setting():
    with pytest.raises(ConfigurationError) as caught:
        check_existing("training.sessions", 1, Replication(3, 2))
    message = str(caught.value)
    assert "topic training.sessions has replication factor 1" in message
    assert "replication_factor setting is 3" in message


@pytest.mark.parametrize("existing", [3, 4])
def test_an_existing_topic_with_as_many_copies_or_more_is_fine(existing):
    check_existing("training.sessions", existing, Replication(3, 2))  # no error


def test_the_local_broker_replicates_its_internal_topics_from_the_settings():
    properties = _server_properties(LocalBrokerConfig(state_dir="s", cache_dir="c", replication_factor=3,
                                                      min_insync_replicas=2), log_dir="d")
    lines = set(properties.splitlines())
    for line in ("offsets.topic.replication.factor=3", "transaction.state.log.replication.factor=3",
                 "transaction.state.log.min.isr=2", "default.replication.factor=3", "min.insync.replicas=2"):
        assert line in lines


def test_the_local_broker_settings_resolve_to_one_copy(monkeypatch):
    _clean_env(monkeypatch)
    settings = load_settings()
    assert (settings.kafka.replication_factor, settings.kafka.min_insync_replicas) == (1, 1)
    [broker] = settings.local_brokers()
    assert (broker.replication_factor, broker.min_insync_replicas) == (1, 1)


def test_an_external_cluster_keeps_unset_replication_for_the_cluster_to_decide(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093,kafka-3:9093")
    assert load_settings().kafka.replication_factor is None
    monkeypatch.setenv("ESPER_KAFKA__REPLICATION_FACTOR", "3")
    monkeypatch.setenv("ESPER_KAFKA__MIN_INSYNC_REPLICAS", "2")
    kafka = load_settings().kafka
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)


def test_the_cli_refuses_a_factor_the_local_broker_cannot_hold_in_one_line():
    result = run_cli("broker", "status", ESPER_KAFKA__REPLICATION_FACTOR="3")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: replication factor 3 is more than"), result.stderr


def test_under_replicated_counts_partitions_with_a_copy_out_of_sync():
    def partition(replicas, isrs):
        p = PartitionMetadata()
        p.replicas, p.isrs = replicas, isrs
        return p

    assert under_replicated([partition([1, 2, 3], [1, 2, 3]), partition([1, 2, 3], [1, 3]),
                             partition([2], [])]) == 2


def test_a_topics_factor_is_its_fewest_listed_copies():
    from confluent_kafka.admin import TopicMetadata

    from services.oona.admin import replication_factor_of

    def topic(*replica_lists):
        t = TopicMetadata()
        t.partitions = {}
        for i, replicas in enumerate(replica_lists):
            p = PartitionMetadata()
            p.id, p.replicas = i, replicas
            t.partitions[i] = p
        return t

    assert replication_factor_of(topic([1, 2, 3], [2, 3], [1, 2, 3])) == 2
    assert replication_factor_of(topic([], [])) == 0  # no replica list yet: nothing to compare


def test_a_broker_away_still_counts_in_the_cluster_size_while_it_holds_copies():
    from confluent_kafka.admin import BrokerMetadata, ClusterMetadata, TopicMetadata

    from services.oona.admin import cluster_size

    metadata = ClusterMetadata()
    metadata.brokers = {1: BrokerMetadata(), 3: BrokerMetadata()}  # broker 2 is restarting
    topic = TopicMetadata()
    for number in range(3):
        partition = PartitionMetadata()
        partition.id, partition.replicas, partition.isrs = number, [1, 2, 3], [1, 3]
        topic.partitions[number] = partition
    metadata.topics = {"t": topic}
    assert cluster_size(metadata) == 3  # a service starting now accepts replication factor 3
    metadata.topics = {}
    assert cluster_size(metadata) == 2  # nothing tells of a third broker
