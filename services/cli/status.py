"""What `esper status` shows: each broker up or down and the active controller, each topic's
replication, each service up or down, consumer lag per group.

Exit codes of ``esper status``: 0 when the brokers and every service are up; 3 when anything is
down (a node of the local cluster included); with ``--strict``, 4 when everything is up but a
service has restarted since ``esper up``, a lag is not 0 (or unknown), or a partition is
under-replicated. A service in a crash loop is
"up" between its deaths, so its restart count is what tells a script or a test about it.

Lag is the number of events on a service's input partitions that it has not consumed yet:
end offset (last stable offset) minus the group's committed offset, summed. Nissa joins no
group; its consumed offsets live in its DuckDB file (``nissa_offsets``) and are read from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import ConfigResource, PartitionMetadata, ResourceType

from contracts import TopicName
from services.core.errors import KafkaClientError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of, replication_factor_of
from services.oona.clients import map_exceptions, reason
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, data_topics, topic_spec

# Kafka's own topics that Esper depends on (group offsets, transaction state): replicated like Esper's.
KAFKA_INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")

# The consumer group of each service and the topics it reads (names without the prefix).
GROUP_INPUTS: dict[str, tuple[TopicName, ...]] = {
    "tamiyo": (TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
               TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS),
    "tezzeret": (TopicName.COMPILATION_BLUEPRINT_SUBMITTED,),
    "urabrask": (TopicName.COMPILATION_KERNEL_READY,),
    "karn": (TopicName.INNOVATION_FIELD_REPORTS,),
}


EXIT_DOWN = 3
EXIT_NOT_CLEAN = 4


def status_exit_code(broker_up: bool, services: list[dict], strict: bool = False, under_replicated: int = 0) -> int:
    """The exit code for ``services`` (each a dict with ``up``, ``restarts``, ``lag``, ``has_lag``) and the
    count of ``under_replicated`` partitions over the topics shown."""
    if not broker_up or not all(s["up"] for s in services):
        return EXIT_DOWN
    clean = under_replicated == 0 and all(s["restarts"] == 0 and (s["lag"] == 0 or not s["has_lag"])
                                          for s in services)
    return EXIT_NOT_CLEAN if strict and not clean else 0


@dataclass(frozen=True)
class BrokerState:
    id: int
    address: str
    up: bool
    pid: int | None = None  # the local cluster's nodes only


@dataclass(frozen=True)
class ClusterView:
    """What the cluster says of itself: its live brokers (id -> host:port) and the controller it names."""

    brokers: dict[int, str]
    controller: int | None


def cluster_view(settings: KafkaSettings, timeout_s: float = 3.0) -> ClusterView | None:
    """The cluster's metadata, None when no broker answers within ``timeout_s``."""
    client = clients.admin(settings)
    try:
        with map_exceptions():
            metadata = client.list_topics(timeout=timeout_s)
    except KafkaClientError:
        return None
    if not metadata.brokers:
        return None
    controller = metadata.controller_id if metadata.controller_id >= 0 else None
    return ClusterView({b.id: f"{b.host}:{b.port}" for b in metadata.brokers.values()}, controller)


def broker_states(view: ClusterView | None, local: list[tuple[int, str, int | None]] | None) -> list[BrokerState]:
    """Each broker up or down. ``local``: the local cluster's nodes (id, address, pid), each up while its
    process runs and the cluster lists it; None (an external cluster): the brokers the cluster lists."""
    alive = view.brokers if view is not None else {}
    if local is None:
        return [BrokerState(node, address, True) for node, address in sorted(alive.items())]
    return [BrokerState(node, address, pid is not None and node in alive, pid) for node, address, pid in local]


@dataclass(frozen=True)
class Lag:
    service: str
    events: int | None  # None: unknown (no offsets yet, or unreadable)
    detail: str = ""


def group_lag(settings: KafkaSettings, service: str, timeout_s: float = 10.0) -> Lag:
    prefix = settings.topic_prefix
    client = clients.admin(settings)
    try:
        with map_exceptions():  # a partition without a leader (a broker just lost): unknown, and why
            partitions = partitions_of(client, [topic_spec(t.value, prefix).name for t in GROUP_INPUTS[service]])
            ends = end_offsets(client, partitions, timeout_s=timeout_s)
    except KafkaClientError as exc:
        return Lag(service, None, reason(exc))
    group = f"{prefix}{service}"
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
    try:
        with map_exceptions():
            # Ask the coordinator first: librdkafka 2.16's OffsetFetch answer handler dereferences a consumer
            # group an admin client does not have when the coordinator is not ready (a fresh broker still
            # loading __consumer_offsets) and the process dies of SIGSEGV; describing the group fails cleanly.
            next(iter(client.describe_consumer_groups([group], request_timeout=timeout_s).values())).result(
                timeout=timeout_s)
    except KafkaClientError:
        return Lag(service, None, "group coordinator not ready")
    except TimeoutError:  # the admin future's own timeout (a loaded broker): unknown, not a failure of the caller
        return Lag(service, None, f"group coordinator did not answer within {timeout_s:g}s")
    try:
        with map_exceptions():
            result = client.list_consumer_group_offsets([request], request_timeout=timeout_s)
            committed = {(tp.topic, tp.partition): tp.offset for tp in
                         next(iter(result.values())).result(timeout=timeout_s).topic_partitions}
    except KafkaClientError as exc:  # unknown, and why
        return Lag(service, None, reason(exc))
    except TimeoutError:
        return Lag(service, None, f"committed offsets not answered within {timeout_s:g}s")
    lag = sum(max(0, end - max(0, committed.get(key, -1))) for key, end in ends.items())
    never = all(committed.get(key, -1) < 0 for key in ends)
    return Lag(service, lag, "no committed offsets yet" if never and lag else "")


def nissa_lag(settings: KafkaSettings, db_path) -> Lag:
    from services.nissa.opening import open_read_only

    try:
        con = open_read_only(db_path, wait_s=3.0)
    except Exception as exc:  # missing or locked file: report, do not fail the status
        return Lag("nissa", None, str(exc).splitlines()[0][:120])
    try:
        stored = {(t, p): o for t, p, o in con.execute("SELECT topic, partition, next_offset FROM nissa_offsets")
                  .fetchall()}
    finally:
        con.close()
    client = clients.admin(settings)
    names = [spec.name for spec in data_topics(settings.topic_prefix)]  # what the sink reads (not the schema log)
    try:
        with map_exceptions():
            ends = end_offsets(client, partitions_of(client, names))
    except KafkaClientError as exc:
        return Lag("nissa", None, reason(exc))
    return Lag("nissa", sum(max(0, end - stored.get(key, 0)) for key, end in ends.items()))


@dataclass(frozen=True)
class TopicReplication:
    topic: str
    factor: int
    min_insync: str  # the topic's min.insync.replicas ("?" when its configs could not be read)
    under_replicated: int  # partitions with fewer in-sync copies than copies


def under_replicated(partitions: Iterable[PartitionMetadata]) -> int:
    """How many of ``partitions`` have a copy out of sync (from ``list_topics`` metadata)."""
    return sum(1 for p in partitions if len(p.isrs) < len(p.replicas))


def topic_replication(settings: KafkaSettings, timeout_s: float = 10.0) -> list[TopicReplication]:
    """Replication of Esper's topics and Kafka's internal ones, those that exist, in registry order."""
    client = clients.admin(settings)
    with map_exceptions():
        metadata = client.list_topics(timeout=timeout_s).topics
    names = [spec.name for spec in all_topics(settings.topic_prefix)] + list(KAFKA_INTERNAL_TOPICS)
    present = [name for name in names if name in metadata and replication_factor_of(metadata[name])]
    futures = client.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in present],
                                      request_timeout=timeout_s)
    min_insync: dict[str, str] = {}
    for resource, future in futures.items():
        try:
            with map_exceptions():
                entry = future.result(timeout=timeout_s).get("min.insync.replicas")
        except KafkaClientError:  # unknown: shown as "?", the status goes on
            continue
        if entry is not None and entry.value is not None:
            min_insync[resource.name] = entry.value
    return [TopicReplication(name, replication_factor_of(metadata[name]), min_insync.get(name, "?"),
                             under_replicated(metadata[name].partitions.values())) for name in present]
