"""Bus benchmarks: HealthSignal encode, encode+produce and consume+decode on a real broker.

Baselines, measured in the same run: per-message pydantic JSON, produced with a
flush after every message (what a naive service does), and read back one
``poll()`` at a time with JSON parsing and pydantic validation.

Ceilings (``services.bench.ceilings``), measured in the same run: encode+produce against
produce of the same values pre-encoded, repeat by repeat (so the machine's load weighs on
both alike), to a topic of its own; consume+decode against a raw ``consume(1000)`` of the
same topic with the services' consumer settings, likewise repeat by repeat.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime

from contracts import HealthSignal, OonaMessage
from services.bench.ceilings import CONSUME_CEILING, PRODUCE_CEILING, CeilingProducer, consume_rate
from services.bench.profiling import own_path
from services.bench.results import BenchResult, Ceiling
from services.oona import clients
from services.oona.admin import delete_topics, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import CONSUMER_DEFAULTS, OonaConsumer
from services.oona.producer import OonaProducer, message_keys
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec

BASELINE_EVENTS = 2000
REPEATS = 3
PRODUCE_CHUNK = 10_000  # messages per publish_many call
# The targets, as fractions of the ceilings measured beside the figures.
PRODUCE_MIN_FRACTION = 0.80
CONSUME_MIN_FRACTION = 0.25


def telemetry_batch(spec: TopicSpec, n: int, runs: int = 8, seeds_per_epoch: int = 256) -> list[OonaMessage]:
    """Realistic telemetry: each epoch's signals share the epoch-end timestamp, as Kasmina emits them."""
    message_type = spec.message_type
    out = []
    now = datetime.now(UTC)
    for i in range(n):
        epoch, slot = divmod(i, seeds_per_epoch)
        payload = HealthSignal(
            layer_id=1000 + slot % 16, seed_idx=slot // 16, layer_name=f"blocks.{slot % 16}.fc", epoch=epoch,
            activation_variance=0.1 + slot * 1e-3, dead_neuron_ratio=0.05, avg_correlation=0.2,
            gradient_norm=0.3, health_score=0.9, execution_latency=0.02, active_seeds=1, total_seeds=16, timestamp=now,
        )
        out.append(message_type(sender_id="tolaria", topic=spec.name, run_id=f"bench-run-{i % runs}",
                                timestamp=now, payload=payload))
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def bench_encode(events: int) -> BenchResult:
    spec = topic_spec("telemetry.seed.health")
    codec = SingleObjectCodec()
    messages = telemetry_batch(spec, events)
    rates, single = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(0, events, PRODUCE_CHUNK):  # as publish_many encodes
            codec.encode_many(spec, messages[i : i + PRODUCE_CHUNK])
        rates.append(_rate(events, time.perf_counter() - start))
        start = time.perf_counter()
        for m in messages:
            codec.encode(spec, m)
        single.append(_rate(events, time.perf_counter() - start))
    fast = statistics.median(rates)
    sample = messages[:BASELINE_EVENTS]
    start = time.perf_counter()
    for m in sample:
        m.model_dump_json().encode()
    naive = _rate(len(sample), time.perf_counter() - start)
    return BenchResult("encode HealthSignal (Avro single-object)", "events/s", fast, "pydantic JSON", naive,
                       details={"events": events, "runs": ", ".join(f"{r:,.0f}" for r in rates),
                                "one_call_per_event_runs": ", ".join(f"{r:,.0f}" for r in single)})


def bench_produce(settings: KafkaSettings, events: int) -> tuple[BenchResult, TopicSpec, list[OonaMessage]]:
    base = topic_spec("telemetry.seed.health")
    spec = TopicSpec(f"bench.{uuid.uuid4().hex[:8]}.telemetry", base.payload, base.key, partitions=6)
    naive_topic = TopicSpec(f"bench.{uuid.uuid4().hex[:8]}.naive", base.payload, base.key, partitions=6)
    ceiling_topic = TopicSpec(f"bench.{uuid.uuid4().hex[:8]}.ceiling", base.payload, base.key, partitions=6)
    ensure_topics(settings, [spec, naive_topic, ceiling_topic])
    codec = SingleObjectCodec()
    messages = telemetry_batch(spec, events)
    producer = OonaProducer(settings, codec)
    ceiling_producer = CeilingProducer(settings)
    encoded = [codec.encode(spec, m) for m in messages]
    keys = message_keys(spec, messages)
    rates, loop_ceilings, batch_ceilings = [], [], []
    for repeat in range(REPEATS):  # the machine is shared: report the median of several runs
        def ours() -> None:
            with own_path():
                start = time.perf_counter()
                for i in range(0, events, PRODUCE_CHUNK):
                    producer.publish_many(spec, messages[i : i + PRODUCE_CHUNK])
                producer.flush()
                rates.append(_rate(events, time.perf_counter() - start))

        runs = [ours, lambda: loop_ceilings.append(ceiling_producer.rate(ceiling_topic.name, encoded, keys)),
                lambda: batch_ceilings.append(ceiling_producer.batch_rate(ceiling_topic.name, encoded, keys))]
        for run in runs[repeat % 3:] + runs[: repeat % 3]:  # each goes first once: no order favours one
            run()
    ceilings = [max(pair) for pair in zip(loop_ceilings, batch_ceilings, strict=True)]
    fast = statistics.median(rates)

    naive_producer = clients.producer(settings)  # the baseline: librdkafka's defaults, nothing of ours
    sample = messages[:BASELINE_EVENTS // 4]
    start = time.perf_counter()
    for m in sample:
        key = m.run_id.encode() if m.run_id else None
        naive_producer.produce(naive_topic.name, m.model_dump_json().encode(), key=key)
        naive_producer.flush()
    naive = _rate(len(sample), time.perf_counter() - start)
    delete_topics(settings, [naive_topic.name, ceiling_topic.name])
    return (
        BenchResult("encode+produce HealthSignal to Kafka", "events/s", fast, "JSON + flush per message", naive,
                    details={"events": events, "runs": ", ".join(f"{r:,.0f}" for r in rates),
                             "ceiling_runs": ", ".join(f"{r:,.0f}" for r in ceilings),
                             "produce_loop_ceiling_runs": ", ".join(f"{r:,.0f}" for r in loop_ceilings),
                             "produce_batch_ceiling_runs": ", ".join(f"{r:,.0f}" for r in batch_ceilings),
                             "fraction_runs": ", ".join(f"{r / c:.1%}" for r, c in zip(rates, ceilings, strict=True)),
                             "value_bytes": round(sum(map(len, encoded)) / len(encoded), 1)},
                    ceilings=[Ceiling(PRODUCE_CEILING, statistics.median(ceilings), PRODUCE_MIN_FRACTION)]),
        spec,
        messages,
    )


# The services' consume batch the figure is measured with: librdkafka hands over up to this many
# messages per ``consume`` call. Chosen by measurement (README, "consumer settings"): CPU per event
# is flat from 500 to 2,000 and a little worse at 5,000 (more objects alive per batch).
SERVICES_CONSUME_BATCH = 1000


def _services_consume_rate(settings: KafkaSettings, codec: SingleObjectCodec, spec: TopicSpec,
                           producer: OonaProducer, dlq: TopicSpec, expected: int) -> tuple[float, float]:
    """(events/s, events per CPU-second) of a fresh OonaConsumer group reading ``expected`` events of ``spec``."""
    consumer = OonaConsumer(settings, codec, group_id=f"bench-{uuid.uuid4().hex[:8]}", topics=[spec],
                            dead_letters=producer, dlq_topic=dlq.name)
    got = 0
    start = cpu_start = None
    deadline = time.monotonic() + 300
    with own_path():
        while got < expected and time.monotonic() < deadline:
            batch = consumer.consume(SERVICES_CONSUME_BATCH, 1.0)
            if batch and start is None:
                start, cpu_start = time.perf_counter() - 1e-9, time.process_time()
            got += len(batch)
    wall = time.perf_counter() - (start or time.perf_counter())
    cpu = time.process_time() - (cpu_start or time.process_time())
    consumer.close()
    if got < expected:
        raise RuntimeError(f"consume of {spec.name}: {got} of {expected} events in 300 s")
    return _rate(got, wall), _rate(got, cpu)


def bench_consume(settings: KafkaSettings, spec: TopicSpec, expected: int) -> BenchResult:
    """The services' consume path against a raw ``consume(1000)``, repeat by repeat (each a fresh group
    reading ``expected`` events from the beginning), so that the machine's load weighs on both alike."""
    codec = SingleObjectCodec()
    dlq = TopicSpec(
        f"bench.{uuid.uuid4().hex[:8]}.dlq", topic_spec("esper.dlq").payload, "source", partitions=1, raw=True
    )
    ensure_topics(settings, [dlq])
    producer = OonaProducer(settings, codec)
    rates, cpu_rates, ceilings = [], [], []
    for _ in range(REPEATS):
        rate, cpu_rate = _services_consume_rate(settings, codec, spec, producer, dlq, expected)
        rates.append(rate)
        cpu_rates.append(cpu_rate)
        ceilings.append(consume_rate(settings, [spec.name], expected, CONSUMER_DEFAULTS))
    fast = statistics.median(rates)
    ceiling = statistics.median(ceilings)

    raw = clients.consumer(settings, {"group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
                                    "auto.offset.reset": "earliest", "enable.auto.commit": False})
    raw.subscribe([spec.name])
    json_bodies: list[str] = []
    while len(json_bodies) < BASELINE_EVENTS:
        msg = raw.poll(1.0)
        if msg is not None and msg.error() is None:
            json_bodies.append(codec.decode(spec, msg.value()).model_dump_json())
    raw.close()
    start = time.perf_counter()
    for body in json_bodies:
        spec.message_type.model_validate_json(body)
    naive = _rate(len(json_bodies), time.perf_counter() - start)
    delete_topics(settings, [spec.name, dlq.name])
    return BenchResult("consume+decode HealthSignal from Kafka", "events/s", fast,
                       "pydantic JSON decode only", naive,
                       details={"events": expected, "batch": SERVICES_CONSUME_BATCH,
                                "runs": ", ".join(f"{r:,.0f}" for r in rates),
                                "ceiling_runs": ", ".join(f"{r:,.0f}" for r in ceilings),
                                "fraction_runs": ", ".join(f"{r / c:.1%}"
                                                           for r, c in zip(rates, ceilings, strict=True)),
                                "events_per_cpu_s": ", ".join(f"{r:,.0f}" for r in cpu_rates)},
                       ceilings=[Ceiling(CONSUME_CEILING, ceiling, CONSUME_MIN_FRACTION)])
