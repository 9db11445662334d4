"""Start-up against log length: Tamiyo and Nissa on logs of 10k / 100k / 1M events (issue 14, item 7).

For each size, a fresh topic prefix gets that many events of finished runs (``run_events``: a session
when the run starts, per epoch one HealthSignal per seed slot and an EpochCompleted, a completed session
at the end), produced with ``OonaProducer.publish_many``. Then, on that log:

- Nissa: a fresh ``NissaSink`` on a fresh DuckDB file, timed from its construction to
  ``run_until_caught_up`` returning (every partition read to the end offsets it had, rows committed).
- Tamiyo, in-process: timed from constructing ``Tamiyo`` (policy load, scatter backend timing, group
  join) until it is caught up: ``settled`` (its past decisions read, nothing held) and its consumer's
  positions at the inputs' end offsets. Twice: the first start decides every epoch of every run (its
  decisions go on the log, as when Tamiyo was down while the runs trained); the restart after it (same
  instance) reads those decisions back and the inputs again, and decides nothing again: the start-up of
  a service that was running all along. The restart is the headline; the first start is in ``details``.

Every size runs in one warm process: a small untimed log goes first (see ``bench_start_up_curves``).

Growth: the exponent between two sizes is log(t2/t1) / log(n2/n1): 1.0 is linear, below it a fixed cost
(group join, policy load) still weighs; above it the start-up grows worse than linearly. The result's
value is the rate at the largest size, its baseline (and target) the rate at the smallest: met when the
largest log loads at least as fast per event as the smallest (overall exponent <= 1). Beside the wall
clock, ``details`` carry the same curve in CPU seconds of the process (``cpu_*``): on a shared machine the
neighbours' load moves the wall clock, not the work done.

    esper bench --only startup-curve
    ESPER_BENCH_START_UP_SIZES=10000,100000,300000 esper bench --only startup-curve   # other sizes
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from contracts import (
    EpochCompleted,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    OonaMessage,
    Seed,
    SessionStatus,
    SystemStatePacket,
    TopicName,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.bench.results import BenchResult
from services.oona import clients
from services.oona.admin import delete_topics, end_offsets, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics, topic_spec

SIZES: tuple[int, ...] = (10_000, 100_000, 1_000_000)
SIZES_VARIABLE = "ESPER_BENCH_START_UP_SIZES"  # comma-separated log lengths, instead of SIZES
# One run: LAYERS x SEEDS_PER_LAYER seed slots, EPOCHS epochs: 2 + EPOCHS x (slots + 1) = 1,002 events.
LAYERS, SEEDS_PER_LAYER, EPOCHS = 6, 4, 40
SLOTS = LAYERS * SEEDS_PER_LAYER
EVENTS_PER_RUN = 2 + EPOCHS * (SLOTS + 1)
PRODUCE_CHUNK = 20_000
CATCH_UP_TIMEOUT_S = 1800.0
WARM_UP_EVENTS = 2_000


# -- the curve (pure) ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def exponent(small: Point, large: Point) -> float:
    """log(t2/t1) / log(n2/n1): how start-up time grows with log length (1.0: linearly)."""
    if large.events <= small.events or small.seconds <= 0 or large.seconds <= 0:
        raise ValueError(f"an exponent needs two sizes in increasing order with positive times: {small}, {large}")
    return math.log(large.seconds / small.seconds) / math.log(large.events / small.events)


def _size(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{unit}"
    return str(n)


def curve_details(points: Sequence[Point]) -> dict[str, float | int | str]:
    """Seconds and events/s per size; exponent and marginal rate (events/s of the extra events) between
    consecutive sizes, and from the smallest to the largest; the worst exponent and whether it is <= 1."""
    ordered = sorted(points, key=lambda p: p.events)
    if len(ordered) < 2:
        raise ValueError("a curve needs at least two sizes")
    details: dict[str, float | int | str] = {}
    for p in ordered:
        details[f"seconds_at_{_size(p.events)}"] = round(p.seconds, 3)
        details[f"events_per_s_at_{_size(p.events)}"] = round(p.rate)
    exponents = []
    for small, large in zip(ordered, ordered[1:], strict=False):
        span = f"{_size(small.events)}_to_{_size(large.events)}"
        e = exponent(small, large)
        exponents.append(e)
        details[f"exponent_{span}"] = round(e, 3)
        extra = large.seconds - small.seconds
        details[f"marginal_events_per_s_{span}"] = round((large.events - small.events) / extra) if extra > 0 else 0
    if len(ordered) > 2:
        details[f"exponent_{_size(ordered[0].events)}_to_{_size(ordered[-1].events)}"] = round(
            exponent(ordered[0], ordered[-1]), 3)
    details["worst_exponent"] = round(max(exponents), 3)
    # Judged at the precision the exponent is measured to (two decimals): 1.002 is linear, 1.01 is not.
    details["no_worse_than_linear"] = "yes" if round(max(exponents), 2) <= 1.0 else "no"
    return details


def curve_result(name: str, points: Sequence[Point], extra: dict[str, float | int | str] | None = None
                 ) -> BenchResult:
    """The rate at the largest size against the rate at the smallest (the target: no slower per event)."""
    ordered = sorted(points, key=lambda p: p.events)
    details = curve_details(ordered)
    small, large = ordered[0], ordered[-1]
    return BenchResult(f"{name} at {_size(large.events)} events on the log", "events/s", large.rate,
                       f"at {_size(small.events)} events", small.rate, target=small.rate,
                       details=details | (extra or {}))


# -- the log ---------------------------------------------------------------------------------------------
def _session(run_id: str, status: SessionStatus) -> TrainingSessionEvent:
    layers = [LayerSpec(name=f"body.{i}", layer_id=100 + i, kind="linear", input_shape=[32], output_shape=[32])
              for i in range(LAYERS)]
    return TrainingSessionEvent(session=TrainingSession(
        session_id=run_id, name=run_id, description="start-up bench run",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[32], num_classes=10, layers=layers,
                                        topology=[LayerEdge(source=a.name, target=b.name)
                                                  for a, b in zip(layers, layers[1:], strict=False)]),
        training_config=TrainingSpec(dataset="bench", epochs=EPOCHS, batch_size=64, learning_rate=1e-3,
                                     adaptation_budget=2, auto_advance=False),
        seeds=[Seed(layer_id=layer.layer_id, seed_idx=k, layer_name=layer.name) for layer in layers
               for k in range(SEEDS_PER_LAYER)],
        status=status,
    ))


def run_events(run_id: str, epochs: int = EPOCHS) -> list[tuple[TopicName, object]]:
    """(topic, payload) of one finished run, in the order Tolaria publishes them."""
    out: list[tuple[TopicName, object]] = [(TopicName.TRAINING_SESSIONS, _session(run_id, SessionStatus.RUNNING))]
    for epoch in range(epochs):
        for i in range(LAYERS):
            for k in range(SEEDS_PER_LAYER):
                out.append((TopicName.TELEMETRY_SEED_HEALTH, HealthSignal(
                    layer_id=100 + i, seed_idx=k, layer_name=f"body.{i}", epoch=epoch,
                    activation_variance=0.5 + 0.01 * k, dead_neuron_ratio=(i * 7 + k + epoch) % 50 / 100,
                    avg_correlation=0.1, gradient_norm=0.2, health_score=0.9 - i / 50, total_seeds=SLOTS)))
        accuracy = 0.5 + 0.3 * (1 - 0.8 ** (epoch + 1))
        out.append((TopicName.SYSTEM_EVENTS_EPOCH, EpochCompleted(
            state=SystemStatePacket(epoch=epoch, total_seeds=SLOTS, active_seeds=0, training_loss=1 - accuracy,
                                    validation_loss=1 - accuracy, system_load=0.1, memory_usage=0.1),
            train_accuracy=accuracy, validation_accuracy=accuracy, epoch_seconds=1.0, parameter_count=100_000,
            health_signals=SLOTS)))
    out.append((TopicName.TRAINING_SESSIONS, _session(run_id, SessionStatus.COMPLETED)))
    return out


def produce_log(kafka: KafkaSettings, events: int) -> int:
    """Whole runs (the last one cut short, without its end) up to ``events`` events; returns the runs."""
    codec = SingleObjectCodec()
    producer = OonaProducer(kafka, codec)
    specs = {t: topic_spec(t.value, kafka.topic_prefix) for t in
             (TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH)}
    pending: dict[TopicName, list[OonaMessage]] = {t: [] for t in specs}

    def flush_pending() -> None:
        for topic, messages in pending.items():
            if messages:
                producer.publish_many(specs[topic], messages)
                messages.clear()

    produced = runs = 0
    try:
        while produced < events:
            run_id = f"startup-{runs:05d}"
            for topic, payload in run_events(run_id)[: events - produced]:
                spec = specs[topic]
                pending[topic].append(spec.message_type(sender_id="tolaria", topic=spec.name, run_id=run_id,
                                                        payload=payload))
                produced += 1
            runs += 1
            if sum(map(len, pending.values())) >= PRODUCE_CHUNK:
                flush_pending()
        flush_pending()
        producer.flush()
    finally:
        producer.close()
    return runs


# -- the measurements --------------------------------------------------------------------------------------
def nissa_start_up(kafka: KafkaSettings, db: Path) -> tuple[float, float, int]:
    """Seconds (wall, CPU of the process) from a fresh sink on a fresh file to caught up; rows committed."""
    from services.nissa.sink import NissaSink

    start, cpu = time.perf_counter(), time.process_time()
    sink = NissaSink(kafka, db, hold_s=3600)
    sink.start()
    sink.run_until_caught_up(timeout_s=CATCH_UP_TIMEOUT_S)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    rows = sink.committed_rows
    sink.close()
    return seconds, cpu_seconds, rows


def read_to_ends(positions: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]) -> bool:
    """Whether every partition of ``ends`` is read to its end: its position (negative: nothing read yet)
    is at or past it; an empty partition is read from the start."""
    return all(end <= 0 or positions.get(key, -1) >= end for key, end in ends.items())


def tamiyo_start_up(kafka: KafkaSettings, input_ends: dict[tuple[str, int], int]) -> tuple[float, float, dict]:
    """Seconds (wall, CPU of the process) from constructing Tamiyo to caught up: settled and its inputs read
    to ``input_ends``."""
    from services.tamiyo.service import Tamiyo

    start, cpu = time.perf_counter(), time.process_time()
    service = Tamiyo(kafka, SingleObjectCodec(), instance="bench", scatter="native")
    try:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        steps = 0
        while True:
            service.step()
            steps += 1
            # Settled before the group assigned anything too: caught up needs the assignment and the positions.
            if service.settled and service.processor.consumer.assignment():
                positions = {(tp.topic, tp.partition): tp.offset for tp in service.processor.consumer.positions()}
                if read_to_ends(positions, input_ends):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tamiyo did not catch up within {CATCH_UP_TIMEOUT_S:g}s")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        stats = service.stats() | {"past_decisions": service.past_decisions, "steps": steps}
    finally:
        service.close()
    return seconds, cpu_seconds, stats


@dataclass
class SizeTimings:
    events: int
    runs: int
    produce_s: float
    nissa_s: float
    tamiyo_first_s: float
    tamiyo_restart_s: float
    # CPU seconds of the whole process (librdkafka's and DuckDB's threads included): what the start-up costs
    # when the wall clock says mostly how busy the neighbours were.
    nissa_cpu_s: float
    tamiyo_first_cpu_s: float
    tamiyo_restart_cpu_s: float
    load_average: str


def measure_size(settings: KafkaSettings, events: int, log: Callable[[str], None] = print) -> SizeTimings:
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    kafka = settings.model_copy(update={"topic_prefix": prefix})
    specs = all_topics(prefix)
    ensure_topics(kafka, specs)
    load_before = os.getloadavg()[0]
    try:
        start = time.perf_counter()
        runs = produce_log(kafka, events)
        produce_s = time.perf_counter() - start
        log(f"startup-curve: {events:,} events ({runs} runs) produced in {produce_s:.1f}s")
        inputs = [topic_spec(t.value, prefix).name for t in
                  (TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
                   TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS)]
        by_name = {s.name: s for s in specs}
        ends = end_offsets(clients.admin(kafka), [(t, p) for t in inputs for p in range(by_name[t].partitions)])
        on_log = sum(ends.values())
        if on_log != events:
            raise RuntimeError(f"startup-curve: {on_log} events on the inputs for {events} produced")
        with tempfile.TemporaryDirectory(prefix="startup-curve-") as tmp:
            nissa_s, nissa_cpu_s, rows = nissa_start_up(kafka, Path(tmp) / "esper.duckdb")
        if rows != events:
            raise RuntimeError(f"startup-curve: nissa committed {rows} rows for {events} events")
        log(f"startup-curve: nissa caught up in {nissa_s:.2f}s (cpu {nissa_cpu_s:.2f}s)")
        first_s, first_cpu_s, first = tamiyo_start_up(kafka, ends)
        log(f"startup-curve: tamiyo first start {first_s:.2f}s (cpu {first_cpu_s:.2f}s) {first}")
        restart_s, restart_cpu_s, again = tamiyo_start_up(kafka, ends)
        log(f"startup-curve: tamiyo restart {restart_s:.2f}s (cpu {restart_cpu_s:.2f}s) {again}")
        if again["epochs_decided"] or again["past_decisions"] != first["epochs_decided"]:
            raise RuntimeError(f"startup-curve: the restart read {again['past_decisions']} past decisions and "
                               f"decided {again['epochs_decided']} epochs again ({first['epochs_decided']} decided)")
    finally:
        delete_topics(kafka, [s.name for s in specs])
    return SizeTimings(events, runs, produce_s, nissa_s, first_s, restart_s, nissa_cpu_s, first_cpu_s, restart_cpu_s,
                       f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}")


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """The curve's log lengths from ``ESPER_BENCH_START_UP_SIZES`` ("10000,100000,300000"); SIZES when unset."""
    if not text or not text.strip():
        return SIZES
    sizes = tuple(sorted({int(part) for part in text.replace("_", "").split(",") if part.strip()}))
    if len(sizes) < 2 or sizes[0] <= 0:
        raise ValueError(f"{SIZES_VARIABLE}={text!r}: at least two positive sizes are needed")
    return sizes


def bench_start_up_curves(settings: KafkaSettings, sizes: Sequence[int] | None = None) -> list[BenchResult]:
    sizes = parse_sizes(os.environ.get(SIZES_VARIABLE)) if sizes is None else sizes
    # Untimed: what a process pays once (generated decoders, first connections, lazy imports) would weigh on
    # the smallest size alone and flatter the curve.
    measure_size(settings, WARM_UP_EVENTS, log=lambda line: None)
    timings = [measure_size(settings, n) for n in sorted(sizes)]
    common: dict[str, float | int | str] = {"events_per_run": EVENTS_PER_RUN, "seed_slots_per_run": SLOTS}
    for t in timings:
        size = _size(t.events)
        common[f"runs_at_{size}"] = t.runs
        common[f"load_average_1m_at_{size}"] = t.load_average

    def curve(label: str, wall: Callable[[SizeTimings], float], cpu: Callable[[SizeTimings], float]) -> dict:
        return prefixed(label, curve_details([Point(t.events, wall(t)) for t in timings])) | prefixed(
            f"{label}cpu_", curve_details([Point(t.events, cpu(t)) for t in timings]))

    first = curve("first_start_", lambda t: t.tamiyo_first_s, lambda t: t.tamiyo_first_cpu_s)
    return [
        curve_result("Tamiyo restart: caught up with the log", [Point(t.events, t.tamiyo_restart_s) for t in timings],
                     common | curve("", lambda t: t.tamiyo_restart_s, lambda t: t.tamiyo_restart_cpu_s) | first),
        curve_result("Nissa fresh sink: caught up with the log", [Point(t.events, t.nissa_s) for t in timings],
                     common | curve("", lambda t: t.nissa_s, lambda t: t.nissa_cpu_s)
                     | {f"produce_seconds_at_{_size(t.events)}": round(t.produce_s, 2) for t in timings}),
    ]


def prefixed(prefix: str, details: dict[str, float | int | str]) -> dict[str, float | int | str]:
    return {f"{prefix}{k}": v for k, v in details.items()}
