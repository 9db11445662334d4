"""Tamiyo's policy topics on the bus: followed into a ``PolicyRegistry``; a version published; one promoted.

Every Tamiyo instance (and ``esper policy list``, ``esper run --policy``) reads both topics whole, from the
beginning, without a consumer group (``TopicView``), so each knows every version and the promotion. A
record that does not decode is skipped there with a log line (Nissa, which sinks every topic, dead-letters
it); one that decodes but whose artifact does not check is refused by the registry with its reason.
"""

from __future__ import annotations

from contracts import OonaMessage, PolicyPromoted, PolicyPublished, TopicName, deterministic_event_id
from services.oona.codec import Codec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.policy_registry import PolicyRegistry
from services.urza.topic_view import TopicView


class PolicyFollower:
    """A registry kept current in-process: both topics read to their ends at start, then polled."""

    def __init__(self, settings: KafkaSettings, codec: Codec, registry: PolicyRegistry) -> None:
        self.registry = registry
        prefix = settings.topic_prefix
        self._published = TopicView(settings, codec, topic_spec(TopicName.LIBRARY_POLICIES.value, prefix))
        self._promotions = TopicView(settings, codec, topic_spec(TopicName.LIBRARY_POLICY_PROMOTIONS.value, prefix))
        self._apply(self._published.catch_up(), self._promotions.catch_up())

    def _apply(self, published: list[OonaMessage], promotions: list[OonaMessage]) -> int:
        for message in published:
            self.registry.publish(message.payload)
        for message in promotions:
            self.registry.promote(message.payload)
        return len(published) + len(promotions)

    def refresh(self) -> int:
        """Apply what arrived since the last call; returns how many records."""
        return self._apply(self._published.poll(0.0), self._promotions.poll(0.0))

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
