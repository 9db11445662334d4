"""Cluster administration: reachability and idempotent topic provisioning."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic, TopicMetadata

from services.core.errors import BrokerUnavailableError, ConfigurationError
from services.oona import clients
from services.oona.replication import Replication, check_existing, replication_for
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TOPICS, TopicSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


def wait_for_broker(settings: KafkaSettings, timeout_s: float | None = None) -> int:
    """Block until the cluster answers a metadata request; returns the broker count."""
    timeout_s = settings.connect_timeout_s if timeout_s is None else timeout_s
    client = clients.admin(settings)
    deadline = time.monotonic() + timeout_s
    failures: list[KafkaError] = []
    while True:
        remaining = deadline - time.monotonic()
        with clients.suppress(clients.any_error, on_suppressed=failures.append):  # any error: ask again
            metadata = client.list_topics(timeout=max(0.5, min(2.0, remaining)))
            if metadata.brokers:
                return len(metadata.brokers)
        last = failures[-1].str() if failures else ""
        if time.monotonic() >= deadline:
            raise BrokerUnavailableError(settings.bootstrap_servers, last or f"no answer within {timeout_s:g}s")
        time.sleep(0.2)


def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = TOPICS,
    timeout_s: float = 30.0,
    grow: bool = False,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent.

    Topics get the replication of ``settings`` (derived from the broker count when unset); an
    existing topic with fewer copies than that is refused, never recreated or ignored. Run-scoped and
    work topics get the partition counts of ``settings``; an existing one with another count is refused
    (Kafka cannot remove partitions), or, with ``grow``, one with fewer is given more
    (``plan_partitions``).
    """
    specs = [spec.sized(settings.run_partitions, settings.work_partitions) for spec in specs]
    client = clients.admin(settings)
    with clients.map_exceptions(lambda reason: BrokerUnavailableError(settings.bootstrap_servers, reason)):
        metadata = client.list_topics(timeout=timeout_s)
    existing = metadata.topics
    replication = cluster_replication(settings, cluster_size(metadata))
    for spec in specs:
        factor = replication_factor_of(existing[spec.name]) if spec.name in existing else 0
        if factor:  # 0: no replica list yet (the topic is being created), nothing to compare
            check_existing(spec.name, factor, replication)
    counts = {spec.name: len(existing[spec.name].partitions) for spec in specs
              if spec.name in existing and existing[spec.name].partitions}
    growing = plan_partitions(specs, counts, grow)
    if growing:
        _grow_partitions(client, growing, timeout_s)
    wanted = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=replication.factor,
                 config={**spec.topic_configs(), "min.insync.replicas": str(replication.min_insync)})
        for spec in specs
        if spec.name not in existing
    ]
    if not wanted:
        return []
    if settings.replication_factor is None and replication.factor == 1:
        # Not silent: one copy of the history is a choice the operator should see being made.
        log.warning("creating %d topic(s) with replication factor 1: the cluster at %s has %d broker(s) "
                    "and no replication_factor is set", len(wanted), settings.bootstrap_servers,
                    len(metadata.brokers))
    created: list[str] = []
    for name, future in client.create_topics(wanted, request_timeout=timeout_s).items():
        # Already there: lost a race with another provisioner.
        with clients.map_exceptions(_cannot_create(name)), \
                clients.suppress({KafkaError.TOPIC_ALREADY_EXISTS}):
            future.result(timeout=timeout_s)
            created.append(name)
            log.info("topic created topic=%s", name)
    _wait_for_metadata(client, created, timeout_s)
    # Leaders known to the metadata are not always serving yet: wait until every partition answers.
    end_offsets(client, partitions_of(client, created), timeout_s=timeout_s)
    return created


def plan_partitions(specs: Iterable[TopicSpec], existing: dict[str, int], grow: bool) -> dict[str, int]:
    """The topics to give more partitions: name -> the new count (empty unless ``grow``).

    ``existing``: the partition count of each topic already there. A scaled topic with more partitions
    than ``specs`` ask for cannot be shrunk (Kafka only adds partitions); one with fewer is grown only
    when asked, since adding partitions moves keys: a run in flight would have its next events on
    another partition than its past ones. Both are a ConfigurationError naming the way out.
    """
    growing: dict[str, int] = {}
    for spec in specs:
        have = existing.get(spec.name)
        if have is None or have == spec.partitions or spec.scaling is None:
            continue
        setting = f"ESPER_KAFKA__{spec.scaling.upper()}_PARTITIONS"
        if have > spec.partitions:
            raise ConfigurationError(
                f"topic {spec.name} has {have} partitions, the settings ask for {spec.partitions}: Kafka cannot "
                f"remove partitions; set {setting}={have} (or delete the topic, and its history with it)")
        if not grow:
            raise ConfigurationError(
                f"topic {spec.name} has {have} partitions, the settings ask for {spec.partitions}; Kafka can add "
                "partitions: `esper topics create --grow-partitions` adds them (only with no run in flight: "
                f"adding partitions moves keys), or set {setting}={have}")
        growing[spec.name] = spec.partitions
    return growing


def _grow_partitions(client: AdminClient, growing: dict[str, int], timeout_s: float) -> None:
    from confluent_kafka.admin import NewPartitions

    requests = [NewPartitions(name, count) for name, count in growing.items()]
    for name, future in client.create_partitions(requests, request_timeout=timeout_s).items():
        with clients.map_exceptions(_cannot_create(name)):
            future.result(timeout=timeout_s)
        log.warning("topic partitions added topic=%s partitions=%d (keys hashed from now on go to the new count)",
                    name, growing[name])
    _wait_for_metadata(client, list(growing), timeout_s)


def cluster_replication(settings: KafkaSettings, brokers: int) -> Replication:
    """The replication of ``settings`` on a cluster of ``brokers`` brokers (a one-line error if it cannot be)."""
    return replication_for(settings.replication_factor, settings.min_insync_replicas, brokers)


def cluster_size(metadata: ClusterMetadata) -> int:
    """The brokers of the cluster: those answering, and those holding a copy of a partition while they are
    away (a node of a cluster restarting). A service started during a rolling restart judges the
    replication setting against the cluster, not against the brokers up at that instant."""
    holders = {replica for topic in metadata.topics.values()
               for partition in topic.partitions.values() for replica in partition.replicas}
    return len(set(metadata.brokers) | holders)


def replication_factor_of(topic: TopicMetadata) -> int:
    """The fewest copies any partition of ``topic`` has (metadata from ``list_topics``); 0 if none is listed."""
    return min((len(p.replicas) for p in topic.partitions.values() if p.replicas), default=0)


def _cannot_create(name: str) -> Callable[[str], ConfigurationError]:
    """The error for a topic the broker refused to create (a function of its own: binds ``name`` now)."""
    return lambda reason: ConfigurationError(f"cannot create topic {name}: {reason}")


def _wait_for_metadata(client: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        topics = client.list_topics(timeout=timeout_s).topics
        pending = {n for n in pending if n not in topics or topics[n].error is not None or not topics[n].partitions
                   or any(p.leader < 0 for p in topics[n].partitions.values())}
        if pending:
            time.sleep(0.1)


def end_offsets(client: AdminClient, partitions: Iterable[tuple[str, int]], committed_only: bool = True,
                timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
    """End offset of each partition in one request (the last stable offset when ``committed_only``)."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # confluent_kafka leaves it unannotated
    wanted = {TopicPartition(t, p): latest for t, p in partitions}
    if not wanted:
        return {}
    level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED

    def ask() -> dict[tuple[str, int], int]:
        futures = client.list_offsets(wanted, isolation_level=level, request_timeout=timeout_s)
        try:
            return {(tp.topic, tp.partition): future.result(timeout=timeout_s).offset for tp, future in futures.items()}
        except TimeoutError:  # a future that never resolved: as transient as a broker that did not answer
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "list_offsets timed out")) from None

    # A just-created partition may not have a leader yet; a restarting broker answers nothing.
    return clients.retry_transient(ask, timeout_s, backoff_s=0.2, quiet=True)


def partitions_of(client: AdminClient, topics: Iterable[str], timeout_s: float = 10.0) -> list[tuple[str, int]]:
    metadata = client.list_topics(timeout=timeout_s).topics
    return [(t, p) for t in topics if t in metadata for p in metadata[t].partitions]


def delete_topics(settings: KafkaSettings, names: list[str], timeout_s: float = 30.0) -> None:
    if not names:
        return
    client = clients.admin(settings)
    for _, future in client.delete_topics(names, request_timeout=timeout_s).items():
        with clients.suppress({KafkaError.UNKNOWN_TOPIC_OR_PART}):  # gone already
            future.result(timeout=timeout_s)


class OffsetReader:
    """End offsets for a long-lived component, riding out a broker restart.

    After a broker restart an admin client can keep answering FENCED_LEADER_EPOCH from stale
    metadata; on any transient failure this drops its client and asks again with a new one,
    until ``timeout_s`` has passed.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client: AdminClient | None = None

    def _call(self, fn: Callable[[AdminClient], T], timeout_s: float) -> T:
        def call() -> T:
            if self._client is None:
                self._client = clients.admin(self.settings)
            return fn(self._client)

        def drop_client(_exc: BaseException) -> None:
            self._client = None

        return clients.retry_transient(call, timeout_s, on_error=drop_client)

    def end_offsets(self, partitions: list[tuple[str, int]], committed_only: bool = True,
                    timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
        return self._call(lambda c: end_offsets(c, partitions, committed_only, timeout_s=min(10.0, timeout_s)),
                          timeout_s)

    def partitions_of(self, topics: list[str], timeout_s: float = 30.0) -> list[tuple[str, int]]:
        return self._call(lambda c: partitions_of(c, topics), timeout_s)

    def committed(self, group_id: str, partitions: list[tuple[str, int]], timeout_s: float = 10.0
                  ) -> dict[tuple[str, int], int]:
        """The group's last *stable* committed offsets (-1001: none), from a fresh client: unlike a
        read_committed consumer's ``committed``, it does not wait for a pending transactional offset
        commit to be resolved (one left by a producer given up can stay pending)."""
        self._client = None  # a new client looks the group coordinator up afresh

        def fetch(client: AdminClient) -> dict[tuple[str, int], int]:
            request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(t, p) for t, p in partitions])
            futures = client.list_consumer_group_offsets([request], require_stable=False,
                                                         request_timeout=timeout_s)
            result = futures[group_id].result(timeout=timeout_s)
            return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        return self._call(fetch, timeout_s)
