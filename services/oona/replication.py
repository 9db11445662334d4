"""Replication of Esper's topics: the factor and min ISR a deployment wants, and the rule for topics
that already exist.

Pure logic, no Kafka client: ``admin.ensure_topics`` and the local broker's ``server.properties``
both take their figures from here, so the event topics and Kafka's internal topics (consumer
offsets, transaction state) are replicated alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import ConfigurationError

# A cluster of this many brokers or more gets 3 copies of every partition, 2 of them in sync
# before a write is acknowledged (acks=all): one broker can die without losing or refusing writes.
REPLICATED_CLUSTER = 3


@dataclass(frozen=True)
class Replication:
    factor: int
    min_insync: int


def default_min_insync(factor: int) -> int:
    """min.insync.replicas for ``factor`` copies: one copy may be down (at least 1, at most 2)."""
    return max(1, min(2, factor - 1))


def replication_for(factor: int | None, min_insync: int | None, brokers: int) -> Replication:
    """The replication a cluster of ``brokers`` brokers gets; ``None`` settings are derived from it.

    Derived: 3 / 2 on a cluster of 3 brokers or more, 1 / 1 below. A setting the cluster cannot
    honour (more copies than brokers, or more in-sync copies than copies) is a configuration
    error now, not a broker error at the first write.
    """
    if factor is None:
        factor = 3 if brokers >= REPLICATED_CLUSTER else 1
    if min_insync is None:
        min_insync = default_min_insync(factor)
    if factor > brokers:
        raise ConfigurationError(
            f"replication factor {factor} is more than the cluster's {brokers} broker(s); "
            "lower the replication_factor setting (ESPER_KAFKA__REPLICATION_FACTOR) or add brokers"
        )
    if min_insync > factor:
        raise ConfigurationError(
            f"min.insync.replicas {min_insync} is more than the replication factor {factor}; "
            "lower the min_insync_replicas setting (ESPER_KAFKA__MIN_INSYNC_REPLICAS)"
        )
    return Replication(factor, min_insync)


def check_existing(topic: str, existing_factor: int, wanted: Replication) -> None:
    """Refuse an existing topic with fewer copies than wanted (more copies are fine).

    Kafka cannot raise a topic's factor in place without a reassignment plan, and recreating the
    topic would drop its history: the operator decides, Esper says what it found.
    """
    if existing_factor < wanted.factor:
        raise ConfigurationError(
            f"topic {topic} has replication factor {existing_factor}, the replication_factor setting is "
            f"{wanted.factor}; raise the topic's factor with kafka-reassign-partitions, or lower the setting"
        )
