"""Read every event of one run back from the log (for assertions)."""

from __future__ import annotations

import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from contracts import OonaMessage
from services.oona.codec import SingleObjectCodec
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tolaria.run import EMITTED_TOPICS


def run_events(kafka: KafkaSettings, run_id: str) -> list[tuple[str, OonaMessage]]:
    """(topic, message) for every event of ``run_id`` on the run-scoped topics, in log order per topic."""
    codec = SingleObjectCodec()
    specs = {topic_spec(t.value, kafka.topic_prefix).name: topic_spec(t.value, kafka.topic_prefix) for t in EMITTED_TOPICS}
    consumer = Consumer(kafka.client_config() | {"group.id": f"readback-{uuid.uuid4().hex[:8]}",
                                                  "enable.auto.commit": False})
    try:
        ends, assignment = {}, []
        for name in specs:
            for p in consumer.list_topics(name, timeout=10).topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    ends[(name, p)] = high
                    assignment.append(TopicPartition(name, p, OFFSET_BEGINNING))
        consumer.assign(assignment)
        out: list[tuple[str, int, OonaMessage]] = []
        done: set = set()
        while len(done) < len(ends):
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None and msg.key() == run_id.encode():
                    out.append((msg.topic(), msg.offset(), codec.decode(specs[msg.topic()], msg.value())))
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    done.add((tp.topic, tp.partition))
        out.sort(key=lambda item: (item[0], item[1]))
        return [(topic, message) for topic, _, message in out]
    finally:
        consumer.close()
