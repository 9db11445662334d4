"""What `esper status` shows: broker health, each service up or down, consumer lag per group.

Exit codes of ``esper status``: 0 when the broker and every service are up; 3 when anything is
down; with ``--strict``, 4 when everything is up but a service has restarted since ``esper up``
or a lag is not 0 (or unknown). A service in a crash loop is "up" between its deaths, so its
restart count is what tells a script or a test about it.

Lag is the number of events on a service's input partitions that it has not consumed yet:
end offset (last stable offset) minus the group's committed offset, summed. Nissa joins no
group; its consumed offsets live in its DuckDB file (``nissa_offsets``) and are read from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from contracts import TopicName
from services.core.errors import KafkaClientError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.clients import map_exceptions, reason
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import data_topics, topic_spec

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


def status_exit_code(broker_up: bool, services: list[dict], strict: bool = False) -> int:
    """The exit code for ``services`` (each a dict with ``up``, ``restarts``, ``lag``, ``has_lag``)."""
    if not broker_up or not all(s["up"] for s in services):
        return EXIT_DOWN
    clean = all(s["restarts"] == 0 and (s["lag"] == 0 or not s["has_lag"]) for s in services)
    return EXIT_NOT_CLEAN if strict and not clean else 0


@dataclass(frozen=True)
class Lag:
    service: str
    events: int | None  # None: unknown (no offsets yet, or unreadable)
    detail: str = ""


def group_lag(settings: KafkaSettings, service: str, timeout_s: float = 10.0) -> Lag:
    prefix = settings.topic_prefix
    client = clients.admin(settings)
    partitions = partitions_of(client, [topic_spec(t.value, prefix).name for t in GROUP_INPUTS[service]])
    ends = end_offsets(client, partitions, timeout_s=timeout_s)
    request = ConsumerGroupTopicPartitions(f"{prefix}{service}", [TopicPartition(t, p) for t, p in partitions])
    try:
        with map_exceptions():
            result = client.list_consumer_group_offsets([request], request_timeout=timeout_s)
            committed = {(tp.topic, tp.partition): tp.offset for tp in
                         next(iter(result.values())).result(timeout=timeout_s).topic_partitions}
    except KafkaClientError as exc:  # unknown, and why
        return Lag(service, None, reason(exc))
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
    ends = end_offsets(client, partitions_of(client, names))
    return Lag("nissa", sum(max(0, end - stored.get(key, 0)) for key, end in ends.items()))
