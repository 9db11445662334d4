"""Tamiyo's latency: its decision at 100 / 1,000 / 10,000 nodes, and the control loop over Kafka.

Decision (a scale curve): per epoch of a synthetic run with L seeded layers x 3 seeds (4L nodes;
data-flow edges with residual skips), fold the epoch's 3L health signals (one batch, as array work:
``RunState.apply_health_batch``; the live service still folds one event per call, see the README) and
its EpochCompleted (graph update), build the features, run the policy (eval mode, inference_mode), pick
the action.
Beside it, in the same run and interleaved epoch by epoch (so that the machine's load weighs on
both alike), the ceiling it is held to: a bare 3-layer GCN forward (64 features, train mode, the
original's measured workload) on the same graph. p50/p99 of wall time, and the CPU time of the
deciding thread (``thread_time``: what the work costs when the machine is shared), threads set as
the service sets them (``policy.INFERENCE_THREADS``), the scatter backend the service would pick.
Each decision's stages are timed inside it (p50 of each in the JSON): the fold of the epoch's events,
the features (``build_graph``), the policy's forward, and the decider's own work (the rest).

Control loop: on loopback, the time from Tolaria-style telemetry + EpochCompleted produced
to Tamiyo's decision visible to a read_committed consumer (commands share its transaction),
beside a plain produce -> consume round trip on the same broker. Tamiyo's own breakdown of each
decision (``Tamiyo.loop_breakdown``: wait for the event, fold, decide, produce, send_offsets,
commit) goes in the details; the transaction (send_offsets + commit) is its own figure, and what
the reader's clock sees beyond Tamiyo's commit is the commit markers reaching the reader.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from typing import cast

import torch
from torch import nn

from contracts import (
    AdaptationDecision,
    AdaptationType,
    EpochCompleted,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    Seed,
    SystemStatePacket,
    TopicName,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.bench.profiling import own_path
from services.bench.results import BenchResult, Ceiling
from services.tamiyo import decider as decider_module
from services.tamiyo.decider import Candidate, Decider, record
from services.tamiyo.features import build_graph
from services.tamiyo.policy import TamiyoPolicy, use_inference_threads
from services.tamiyo.policy_store import load_policy
from services.tamiyo.run_state import RunState
from services.tamiyo.scatter import ScatterBackend, select_backend

LAYERS, SEEDS_PER_LAYER, SKIPS = 250, 3, (1, 2, 4, 8, 16, 32)
EPOCHS = 60
GCN_CEILING = "bare 3-layer GCN forward on the same graph (train mode)"
# The target at 1,000 nodes: the decision within 1.5x the bare forward, i.e. >= 2/3 of its speed.
GCN_MIN_FRACTION = 1 / 1.5


class _OneKernel:
    def candidates(self, input_shape, output_shape):
        return [Candidate("k-bench", "bp-bench", "mlp")]

    def units(self, kernel_id):
        return 0

    def positions(self):
        return []


def _session(layers: int, per_layer: int, epochs: int) -> TrainingSessionEvent:
    specs = [LayerSpec(name=f"body.{i}", layer_id=10_000 + i, kind="linear", input_shape=[64], output_shape=[64])
             for i in range(layers)]
    topology = [LayerEdge(source=a.name, target=specs[i + k].name) for i, a in enumerate(specs) for k in SKIPS
                if i + k < layers]
    return TrainingSessionEvent(session=TrainingSession(
        session_id="bench", name="bench", description="latency bench",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, layers=specs,
                                        topology=topology),
        training_config=TrainingSpec(dataset="bench", epochs=epochs, batch_size=64, learning_rate=1e-3,
                                     adaptation_budget=10_000, auto_advance=False),
        seeds=[Seed(layer_id=s.layer_id, seed_idx=k, layer_name=s.name) for s in specs for k in range(per_layer)],
    ))


def _epoch_events(epoch: int, layers: int, per_layer: int) -> tuple[list[HealthSignal], EpochCompleted]:
    signals = [HealthSignal(layer_id=10_000 + i, seed_idx=k, epoch=epoch, activation_variance=0.5 + 0.01 * k,
                            dead_neuron_ratio=(i * 7 + k) % 50 / 100, avg_correlation=0.1, gradient_norm=0.2,
                            health_score=0.9 - (i % 10) / 50, total_seeds=per_layer)
               for i in range(layers) for k in range(per_layer)]
    accuracy = 0.5 + 0.3 * (1 - 0.8 ** (epoch + 1))
    done = EpochCompleted(
        state=SystemStatePacket(epoch=epoch, total_seeds=layers * per_layer, active_seeds=0, training_loss=1 - accuracy,
                                validation_loss=1 - accuracy, system_load=0.1, memory_usage=0.1),
        train_accuracy=accuracy, validation_accuracy=accuracy, epoch_seconds=1.0, parameter_count=1_000_000,
        health_signals=len(signals))
    return signals, done


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class _GCN(nn.Module):
    """The original's measured workload: 3 GCN layers (sum of normalised neighbour messages)."""

    def __init__(self, features: int, scatter: ScatterBackend) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(features, features) for _ in range(3))
        self.scatter = scatter

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        source, target = edge_index
        degree = torch.bincount(target, minlength=x.shape[0]).clamp_min(1).to(x.dtype)
        norm = degree.rsqrt()
        for layer in self.layers:
            h = layer(x)
            messages = h.index_select(0, source) * (norm[source] * norm[target]).unsqueeze(1)
            x = torch.relu(self.scatter.sum(messages, target, x.shape[0]))
        return x


def _timed(work) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    work()
    return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


STAGES = ("fold", "features", "forward", "decider")


class _StageClock:
    """The wall time of the decision's stages as the decider runs them: the features (``build_graph``, as the
    decider module calls it) and the policy's forward (``decide``, through this object standing in for the
    policy); the decider's own work is the rest of ``Decider.decide``."""

    def __init__(self, policy: TamiyoPolicy) -> None:
        self.policy = policy
        self.spent = dict.fromkeys(STAGES, 0.0)

    def decide(self, x: torch.Tensor, edge_index: torch.Tensor):
        start = time.perf_counter()
        try:
            return self.policy.decide(x, edge_index)
        finally:
            self.spent["forward"] += (time.perf_counter() - start) * 1000

    def build_graph(self, run: RunState, epoch: int):
        start = time.perf_counter()
        try:
            return build_graph(run, epoch)
        finally:
            self.spent["features"] += (time.perf_counter() - start) * 1000


def measure_decisions(backend: ScatterBackend, layers: int = LAYERS, epochs: int = EPOCHS,
                      warm_up: int = 5) -> dict[str, float]:
    """Decision latency on a run of ``layers`` x (1 + SEEDS_PER_LAYER) nodes, each epoch beside a bare GCN
    forward on the same graph; the stages of each decision (fold, features, forward, decider) timed in it."""
    policy, record_ = load_policy()
    policy.scatter = backend
    clock = _StageClock(policy)
    decider = Decider(cast(TamiyoPolicy, clock), record_.version, _OneKernel())
    run = RunState("bench")
    run.apply_session(_session(layers, SEEDS_PER_LAYER, epochs))
    events = [_epoch_events(e, layers, SEEDS_PER_LAYER) for e in range(epochs)]
    nodes = layers * (1 + SEEDS_PER_LAYER)
    gcn = _GCN(64, backend).train()
    gcn_x = torch.randn(nodes, 64, generator=torch.Generator().manual_seed(0))
    edge_index = None
    totals, cpus, gcn_walls, gcn_cpus = [], [], [], []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    original = decider_module.build_graph
    decider_module.build_graph = clock.build_graph  # the bench's own decider only; put back below
    try:
        for epoch, (signals, done) in enumerate(events):
            clock.spent = dict.fromkeys(STAGES, 0.0)
            with own_path(f"{nodes}-nodes"):
                start, cpu = time.perf_counter(), time.thread_time()
                refused = run.apply_health_batch(signals)
                run.apply_epoch(done)
                ready = run.ready_epochs()
                middle = time.perf_counter()
                for e in ready:
                    for action in decider.decide(run, e):
                        record(run, action.decision)
                end, cpu_end = time.perf_counter(), time.thread_time()
            if refused:
                raise RuntimeError(f"the bench's own health signals were refused: {refused[0][1]}")
            if edge_index is None:
                edge_index = build_graph(run, epoch).edge_index
            gcn_wall, gcn_cpu = _timed(lambda edges=edge_index: gcn(gcn_x, edges))
            if epoch >= warm_up:
                totals.append((end - start) * 1000)
                cpus.append((cpu_end - cpu) * 1000)
                spent = clock.spent
                spent["fold"] = (middle - start) * 1000
                spent["decider"] = (end - middle) * 1000 - spent["features"] - spent["forward"]
                for stage in STAGES:
                    stages[stage].append(spent[stage])
                gcn_walls.append(gcn_wall)
                gcn_cpus.append(gcn_cpu)
    finally:
        decider_module.build_graph = original
    graph = build_graph(run, epochs - 1)
    return {"p50": statistics.median(totals), "p99": _percentile(totals, 0.99), "cpu_p50": statistics.median(cpus),
            **{f"{stage}_p50": statistics.median(stages[stage]) for stage in STAGES},
            "gcn_p50": statistics.median(gcn_walls),
            "gcn_p99": _percentile(gcn_walls, 0.99), "gcn_cpu_p50": statistics.median(gcn_cpus),
            "nodes": nodes, "edges": int(graph.edge_index.shape[1]), "samples": len(totals), "hidden": policy.hidden}


# The scale curve: (layers, epochs). Each layer carries SEEDS_PER_LAYER seeds, so nodes = 4 x layers.
SCALES: tuple[tuple[int, int], ...] = ((25, EPOCHS), (LAYERS, EPOCHS), (2_500, 20))


def bench_decision_latency(scales: tuple[tuple[int, int], ...] = SCALES) -> list[BenchResult]:
    threads = torch.get_num_threads()
    use_inference_threads()
    try:
        backend, timings = select_backend(torch.device("cpu"))
        results = []
        for layers, epochs in scales:
            torch.manual_seed(0)
            load = os.getloadavg()[0]
            d = measure_decisions(backend, layers, epochs)
            results.append(BenchResult(
                f"Tamiyo decision incl. graph update, {d['nodes']:,} nodes / {d['edges']:,} edges",
                "ms p50", d["p50"], GCN_CEILING, d["gcn_p50"], higher_is_better=False,
                ceilings=[Ceiling(GCN_CEILING, d["gcn_p50"], GCN_MIN_FRACTION if d["nodes"] == 1000 else None)],
                details={"p99_ms": round(d["p99"], 3), "gcn_p99_ms": round(d["gcn_p99"], 3),
                         "p50_over_gcn": round(d["p50"] / d["gcn_p50"], 2),
                         "cpu_p50_ms": round(d["cpu_p50"], 3), "gcn_cpu_p50_ms": round(d["gcn_cpu_p50"], 3),
                         "cpu_p50_over_gcn": round(d["cpu_p50"] / d["gcn_cpu_p50"], 2),
                         **{f"{stage}_p50_ms": round(d[f"{stage}_p50"], 3) for stage in STAGES},
                         "forward_p50_over_gcn": round(d["forward_p50"] / d["gcn_p50"], 2),
                         "policy_hidden": d["hidden"], "samples": d["samples"],
                         "load_average_1m": f"{load:.2f} -> {os.getloadavg()[0]:.2f}",
                         "threads": torch.get_num_threads(), "backend": backend.name,
                         "backend_timings_ms": ", ".join(f"{k}={v:.3f}" for k, v in timings.items())},
            ))
            if d["nodes"] == 1000:
                results[-1].details["quiet_machine_target_ms"] = 2.0
        return results
    finally:
        torch.set_num_threads(threads)


def bench_control_loop(kafka, epochs: int = 60) -> BenchResult:
    """Telemetry + EpochCompleted produced -> Tamiyo's decision consumed, p95 over ``epochs`` epochs."""
    from services.oona.admin import delete_topics, ensure_topics
    from services.oona.codec import SingleObjectCodec
    from services.oona.consumer import OonaConsumer
    from services.oona.producer import OonaProducer
    from services.oona.topic_registry import all_topics, topic_spec
    from services.tamiyo.service import Tamiyo

    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    kafka = kafka.model_copy(update={"topic_prefix": prefix})
    topics = all_topics(prefix)
    ensure_topics(kafka, topics)
    codec = SingleObjectCodec()
    producer = OonaProducer(kafka, codec)
    spec = {t.value: topic_spec(t.value, prefix) for t in TopicName}
    run_id = "control-loop"
    decisions = spec[TopicName.CONTROL_TAMIYO_DECISIONS.value]
    reader = OonaConsumer(kafka, codec, group_id=f"{prefix}reader", dead_letters=producer, topics=[decisions],
                          dlq_topic=spec[TopicName.DLQ.value].name)
    service = Tamiyo(kafka, codec, instance="bench", scatter="native")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            service.step()

    thread = threading.Thread(target=serve, daemon=True)

    def send(topic: str, payload) -> None:
        producer.publish(spec[topic], spec[topic].message_type(sender_id="bench", topic=spec[topic].name,
                                                               run_id=run_id, payload=payload))

    loop_ms: list[float] = []
    round_trip_ms: list[float] = []
    load = os.getloadavg()[0]
    try:
        reader.wait_for_assignment()
        with own_path():  # Tamiyo's serving thread, its whole life, and the loop that feeds and reads it
            thread.start()
            send(TopicName.TRAINING_SESSIONS.value, _session(2, 2, epochs + 1))
            for epoch in range(epochs):
                signals, done = _epoch_events(epoch, 2, 2)
                for signal in signals:
                    send(TopicName.TELEMETRY_SEED_HEALTH.value, signal)
                send(TopicName.SYSTEM_EVENTS_EPOCH.value, done)
                start = time.perf_counter()
                producer.flush()
                deadline = time.monotonic() + 30
                seen = False
                while not seen and time.monotonic() < deadline:
                    seen = any(d.message.payload.epoch == epoch for d in reader.consume(100, 0.5))
                if not seen:
                    raise RuntimeError(f"no decision for epoch {epoch} within 30s")
                loop_ms.append((time.perf_counter() - start) * 1000)
        # Baseline: the same producer -> the same consumer, without Tamiyo in between.
        for i in range(epochs):
            send(TopicName.CONTROL_TAMIYO_DECISIONS.value, AdaptationDecision(
                layer_name="probe", adaptation_type=AdaptationType.NO_OP, confidence=1, urgency=0, epoch=100_000 + i))
            start = time.perf_counter()
            producer.flush()
            deadline = time.monotonic() + 30
            seen = False
            while not seen and time.monotonic() < deadline:
                seen = any(d.message.payload.epoch == 100_000 + i for d in reader.consume(100, 0.5))
            round_trip_ms.append((time.perf_counter() - start) * 1000)
    finally:
        stop.set()
        thread.join(timeout=30)
        service.close()
        reader.close()
        producer.close()
        delete_topics(kafka, [t.name for t in topics])
    stages = service.loop_breakdown()
    transaction = sorted(s["send_offsets"] + s["commit"] for s in service.loop_stages)
    return BenchResult(
        "Control loop: telemetry produced -> decision consumed (loopback)", "ms p95", _percentile(loop_ms, 0.95),
        "plain produce -> consume round trip", _percentile(round_trip_ms, 0.95), higher_is_better=False, target=25.0,
        details={"p50_ms": round(statistics.median(loop_ms), 2), "epochs": epochs,
                 "round_trip_p50_ms": round(statistics.median(round_trip_ms), 2),
                 "transaction_ms_p50": round(statistics.median(transaction), 2) if transaction else None,
                 "transaction_ms_p95": round(_percentile(transaction, 0.95), 2) if transaction else None,
                 "tamiyo_stages_ms": stages,
                 "load_average_1m": f"{load:.2f} -> {os.getloadavg()[0]:.2f}"},
    )
