"""``esper tail TOPIC``: decode a topic's events and print them as JSON lines."""

from __future__ import annotations

import sys
import time
import uuid

from services.cli.settings import load_settings
from services.oona.admin import wait_for_broker
from services.oona.codec import make_codec
from services.oona.consumer import OonaConsumer
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec


def tail(topic: str, *, max_events: int = 0, from_beginning: bool = False, timeout_s: float = 0.0) -> int:
    topic_spec(topic)  # unknown topic: one-line error before touching the cluster
    settings = load_settings()
    spec = topic_spec(topic, settings.kafka.topic_prefix)
    if spec.raw:
        from services.core.errors import UnknownTopicError

        raise UnknownTopicError(f"{topic} (raw bytes; read it with `esper sql` once Nissa sinks it)")
    wait_for_broker(settings.kafka)
    codec = make_codec(settings.kafka.schema_registry_url)
    producer = OonaProducer(settings.kafka, codec)
    consumer = OonaConsumer(
        settings.kafka, codec, group_id=f"esper-tail-{uuid.uuid4().hex[:8]}", topics=[spec], dead_letters=producer,
        config={"auto.offset.reset": "earliest" if from_beginning else "latest", "enable.auto.commit": False},
    )
    shown = 0
    idle_since = time.monotonic()
    try:
        while max_events == 0 or shown < max_events:
            batch = consumer.consume(100, 0.5)
            if not batch:
                if timeout_s and time.monotonic() - idle_since > timeout_s:
                    break
                continue
            idle_since = time.monotonic()
            for delivered in batch:
                # An event that cannot be shown is dead-lettered; writing stays outside (a closed pipe is not
                # its fault).
                line = consumer.handle_isolated(delivered, lambda d: d.message.model_dump_json())
                if line is None:
                    continue
                sys.stdout.write(line + "\n")
                shown += 1
                if max_events and shown >= max_events:
                    break
            sys.stdout.flush()
    finally:
        consumer.close()
        producer.flush()
    return 0
