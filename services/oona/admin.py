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
    """End offset of each partition (the last stable offset when ``committed_only``), asked again on the
    same client while the answer is a transient error (a just-created partition may not have a leader
    yet; a restarting broker answers nothing). For a client that is short-lived; a long-lived one goes
    through ``OffsetReader``."""
    partitions = list(partitions)
    return clients.retry_transient(lambda: list_end_offsets(client, partitions, committed_only, timeout_s),
                                   timeout_s, backoff_s=0.2, quiet=True)


def list_end_offsets(client: AdminClient, partitions: Iterable[tuple[str, int]], committed_only: bool,
                     timeout_s: float) -> dict[tuple[str, int], int]:
    """One ListOffsets request for the end of each partition, answered within ``timeout_s`` or raised
    (a ``KafkaException``; ``_TIMED_OUT`` when it was not answered in time)."""
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import OffsetSpec

    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # confluent_kafka leaves it unannotated
    wanted = {TopicPartition(t, p): latest for t, p in partitions}
    if not wanted:
        return {}
    level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
    futures = client.list_offsets(wanted, isolation_level=level, request_timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        return {(tp.topic, tp.partition): future.result(timeout=max(0.0, deadline - time.monotonic())).offset
                for tp, future in futures.items()}
    except TimeoutError:  # a future that never resolved: as transient as a broker that did not answer
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "list_offsets timed out")) from None


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
    """End offsets for a long-lived component, riding out a broker's loss or restart.

    librdkafka's ListOffsets looks each partition's leader up once, in the client's metadata cache,
    and then waits for that broker until the request times out; while the cache names a leader it is
    not refreshed. A client that cached a leader which then died (``kill -9`` of a cluster node) waits
    on the dead broker for the whole timeout, every call, long after the controller elected a new
    leader, reconnecting to it in a busy loop meanwhile (seen: ~30,000 lookups and ~15,000 refused
    connections a second per client, for 10 s a call, 30 s after the new leaders were elected). And
    after a broker restart a client can keep answering FENCED_LEADER_EPOCH from stale metadata.

    So each attempt is short (``ATTEMPT_S``, growing by half on each failure up to ``ATTEMPT_MAX_S``,
    so that a slow but healthy cluster is still answered: a fresh client's first answer took ~0.5 s at
    load 60 on 2 cores), and any failed attempt drops the client: the next attempt starts from fresh
    metadata, which names the new leader as soon as there is one, an attempt later at most. (A cap of
    10 s was measured to answer up to 9 s after the election.) Attempts go on until ``timeout_s``.
    """

    ATTEMPT_S = 2.0
    ATTEMPT_MAX_S = 4.0
    SLOW_S = 5.0  # a call failing this long is logged as a warning

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client: AdminClient | None = None

    def _call(self, what: str, fn: Callable[[AdminClient, float], T], timeout_s: float) -> T:
        """``fn(client, attempt_timeout_s)``, retried on a new client after each transient failure."""
        attempt_s = self.ATTEMPT_S
        started = time.monotonic()
        failures: list[str] = []
        warned = False

        def call() -> T:
            if self._client is None:
                self._client = clients.admin(self.settings)
            return fn(self._client, min(attempt_s, max(0.5, started + timeout_s - time.monotonic())))

        def drop_client(exc: BaseException) -> None:
            nonlocal attempt_s, warned
            self._client = None
            failures.append(clients.reason(exc))
            if not warned:
                # A caller blocked here through an outage says so once, SLOW_S in; a passing blip (one slow
                # attempt on a loaded machine) is only info, and stays out of a one-shot command's stderr.
                warned = time.monotonic() - started >= self.SLOW_S
                (log.warning if warned else log.info)(
                    "%s: transient Kafka error (%s); asking again on new clients for up to %.0fs", what,
                    failures[-1], timeout_s)
            attempt_s = min(self.ATTEMPT_MAX_S, attempt_s * 1.5)

        result = clients.retry_transient(call, timeout_s, backoff_s=0.2, on_error=drop_client, quiet=True)
        if failures:
            (log.warning if warned else log.info)(
                "%s answered after %.1fs and %d failed attempt(s) on replaced clients (last: %s)",
                what, time.monotonic() - started, len(failures), failures[-1])
        return result

    def end_offsets(self, partitions: list[tuple[str, int]], committed_only: bool = True,
                    timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
        return self._call("end offsets", lambda c, attempt_s: list_end_offsets(c, partitions, committed_only,
                                                                               attempt_s), timeout_s)

    def partitions_of(self, topics: list[str], timeout_s: float = 30.0) -> list[tuple[str, int]]:
        return self._call("partitions", lambda c, attempt_s: partitions_of(c, topics, attempt_s), timeout_s)

    def group_members(self, group_id: str, timeout_s: float = 10.0) -> set[str]:
        """The member ids the group coordinator counts in the group now (none: the group is empty)."""
        def describe(client: AdminClient, attempt_s: float) -> set[str]:
            future = client.describe_consumer_groups([group_id], request_timeout=attempt_s)[group_id]
            try:
                return {member.member_id for member in future.result(timeout=attempt_s + 1).members}
            except TimeoutError:  # never resolved: as transient as a broker that did not answer
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "describe_consumer_groups timed out")) from None

        return self._call("group members", describe, timeout_s)

    def committed(self, group_id: str, partitions: list[tuple[str, int]], timeout_s: float = 10.0
                  ) -> dict[tuple[str, int], int]:
        """The group's last *stable* committed offsets (-1001: none), from a fresh client: unlike a
        read_committed consumer's ``committed``, it does not wait for a pending transactional offset
        commit to be resolved (one left by a producer given up can stay pending)."""
        self._client = None  # a new client looks the group coordinator up afresh

        def fetch(client: AdminClient, attempt_s: float) -> dict[tuple[str, int], int]:
            request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(t, p) for t, p in partitions])
            futures = client.list_consumer_group_offsets([request], require_stable=False,
                                                         request_timeout=attempt_s)
            try:
                result = futures[group_id].result(timeout=attempt_s)
            except TimeoutError:  # not answered in time: another attempt, on a new client
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "committed offsets timed out")) from None
            return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        return self._call("committed offsets", fetch, timeout_s)
