"""Tamiyo's policy topics on the bus: followed into a ``PolicyRegistry``; a version published; one promoted.

Every Tamiyo instance (and ``esper policy list``, ``esper run --policy``) reads both topics whole, from the
beginning, without a consumer group (``TopicView``), so each knows every version and the promotion. A
record of ``library.policies`` that does not decode, or whose artifact the registry refuses, is kept in
``unusable`` with the reason: the service dead-letters it once (see ``Tamiyo._dead_letter_policies``).
A promotion that does not decode is skipped with a log line (Nissa keeps it in its ``dead_letters``).
"""

from __future__ import annotations

import logging
from collections import deque

from confluent_kafka import Message

from contracts import PolicyPromoted, PolicyPublished, TopicName, deterministic_event_id
from services.oona.codec import Codec
from services.oona.messages import position_of
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.policy_registry import PolicyRegistry
from services.urza.topic_view import TopicView, ViewRecord

log = logging.getLogger(__name__)

# Unusable records kept to be dead-lettered (the latest; each may be up to 2 MiB). The instance that dead-letters
# them goes through them after every batch, so only more than this many between two batches lose a dead letter
# (logged as a warning); the others keep the latest ones in case they become that instance.
UNUSABLE_KEPT = 64


class PolicyFollower:
    """A registry kept current in-process: both topics read to their ends at start, then polled."""

    def __init__(self, settings: KafkaSettings, codec: Codec, registry: PolicyRegistry) -> None:
        self.registry = registry
        prefix = settings.topic_prefix
        self.published_topic = topic_spec(TopicName.LIBRARY_POLICIES.value, prefix).name
        self._published = TopicView(settings, codec, topic_spec(TopicName.LIBRARY_POLICIES.value, prefix))
        self._promotions = TopicView(settings, codec, topic_spec(TopicName.LIBRARY_POLICY_PROMOTIONS.value, prefix))
        # library.policies records refused: (offset, record, reason, error type), oldest first.
        self.unusable: deque[tuple[int, Message, str, str]] = deque(maxlen=UNUSABLE_KEPT)
        self.read_to = 0  # library.policies' offset below which every record was folded (one partition)
        self._apply(self._published.read_to_end(), self._promotions.catch_up())

    def _apply(self, published: list[ViewRecord], promotions: list) -> int:
        for record in published:
            offset = position_of(record.raw)[2]
            if record.message is None and record.failure is None:  # a tombstone: nothing to fold or refuse
                self.read_to = max(self.read_to, offset + 1)
                continue
            if record.message is None:
                problem, kind = record.failure, "UndecodablePolicy"
            else:
                problem, kind = self.registry.publish(record.message.payload), "RefusedPolicy"
            if problem is not None:
                if len(self.unusable) == UNUSABLE_KEPT:
                    log.warning("keeping the latest %d unusable policy records; offset=%d may not be dead-lettered",
                                UNUSABLE_KEPT, self.unusable[0][0])
                self.unusable.append((offset, record.raw, problem, kind))
            self.read_to = max(self.read_to, offset + 1)
        for message in promotions:
            self.registry.promote(message.payload)
        return len(published) + len(promotions)

    def refresh(self) -> int:
        """Apply what arrived since the last call; returns how many records."""
        return self._apply(self._published.read(0.0), self._promotions.poll(0.0))

    def close(self) -> None:
        self._published.close()
        self._promotions.close()


def load_registry(settings: KafkaSettings, codec: Codec, registry: PolicyRegistry) -> PolicyRegistry:
    """``registry`` with both topics folded up to their current ends."""
    PolicyFollower(settings, codec, registry).close()
    return registry


def publish_policy(settings: KafkaSettings, codec: Codec, record: PolicyPublished, sender: str = "cli") -> None:
    """Put a version on ``library.policies`` (its event id is the version's: publishing it again is a duplicate)."""
    spec = topic_spec(TopicName.LIBRARY_POLICIES.value, settings.topic_prefix)
    producer = OonaProducer(settings, codec)
    producer.publish(spec, spec.message_type(event_id=deterministic_event_id("tamiyo-policy", record.version),
                                             sender_id=sender, topic=spec.name, payload=record))
    producer.flush()


def promote_policy(settings: KafkaSettings, codec: Codec, promotion: PolicyPromoted, sender: str = "cli") -> None:
    """Put a promotion on ``library.policy.promotions``: from its position on, the promoted version."""
    spec = topic_spec(TopicName.LIBRARY_POLICY_PROMOTIONS.value, settings.topic_prefix)
    producer = OonaProducer(settings, codec)
    producer.publish(spec, spec.message_type(sender_id=sender, topic=spec.name, payload=promotion))
    producer.flush()
