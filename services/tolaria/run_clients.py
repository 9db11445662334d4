"""A run's Kafka clients: its topics ensured, the producer and emitter, the command consumer, the kernel library."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import TopicName
from services.oona.admin import ensure_topics, wait_for_broker
from services.oona.codec import Codec, make_codec
from services.oona.consumer import Delivered, OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.topic_registry import TopicSpec, topic_spec
from services.tolaria.checkpoint import PendingCommand
from services.tolaria.emitter import RunEmitter
from services.urza.kernel_library import KernelLibrary

EMITTED_TOPICS = (
    TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
    TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS,
)


@dataclass(frozen=True)
class RunClients:
    codec: Codec
    emitter: RunEmitter
    commands: OonaConsumer  # reads the commands and the controller's decisions; dead-letters what it cannot apply
    commands_spec: TopicSpec
    decisions_spec: TopicSpec
    library: KernelLibrary | None  # None when the run does not adapt

    def pending_command(self, record: PendingCommand) -> Delivered:
        """A command carried in a checkpoint, decoded again."""
        value = record.value_bytes
        return Delivered(record.topic, record.partition, record.offset, record.key_bytes,
                         self.codec.decode(self.commands_spec, value), value)

    def close(self) -> None:
        self.commands.close()
        if self.library is not None:
            self.library.close()


def connect(settings, run_id: str, adapt: bool) -> RunClients:
    """Wait for the broker, make sure every topic the run touches exists, and join the run's command group."""
    kafka = settings.kafka
    wait_for_broker(kafka)
    prefix = kafka.topic_prefix
    topics = {t.value: topic_spec(t.value, prefix) for t in EMITTED_TOPICS}
    commands_spec = topic_spec(TopicName.CONTROL_KASMINA_COMMANDS.value, prefix)
    decisions_spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, prefix)
    library_spec = topic_spec(TopicName.LIBRARY_KERNELS.value, prefix)
    dlq_spec = topic_spec(TopicName.DLQ.value, prefix)
    ensure_topics(kafka, [*topics.values(), commands_spec, decisions_spec, library_spec, dlq_spec])
    codec = make_codec(kafka.schema_registry_url)
    producer = OonaProducer(kafka, codec)
    emitter = RunEmitter(kafka, producer, codec, topics, run_id)
    commands = OonaConsumer(kafka, codec, group_id=f"tolaria.{run_id}", topics=[commands_spec, decisions_spec],
                            dead_letters=producer, dlq_topic=dlq_spec.name)
    commands.wait_for_assignment()
    library = KernelLibrary(kafka, codec, library_spec, settings.state_dir / "blobs") if adapt else None
    return RunClients(codec, emitter, commands, commands_spec, decisions_spec, library)
