"""Read every event of one run back from the log (for assertions)."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING

from contracts import OonaMessage
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.log_reader import read_range
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tolaria.run_clients import EMITTED_TOPICS


def run_events(kafka: KafkaSettings, run_id: str) -> list[tuple[str, OonaMessage]]:
    """(topic, message) for every event of ``run_id`` on the run-scoped topics, in log order per topic."""
    codec = SingleObjectCodec()
    specs = {spec.name: spec for spec in (topic_spec(t.value, kafka.topic_prefix) for t in EMITTED_TOPICS)}
    admin = clients.admin(kafka)
    ends = end_offsets(admin, partitions_of(admin, list(specs)), committed_only=False)
    messages = read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})
    ours = sorted((m for m in messages if m.key() == run_id.encode()), key=lambda m: (m.topic(), m.offset()))
    return [(m.topic(), codec.decode(specs[m.topic()], m.value())) for m in ours]
