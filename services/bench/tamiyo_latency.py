"""Tamiyo's latency: one decision on a 1,000-node model graph, and the control loop over Kafka.

Decision: per epoch of a synthetic run with 250 seeded layers x 3 seeds (1,000 nodes;
data-flow edges with residual skips, ~2,900 edges): fold the epoch's 750 health signals
and its EpochCompleted (graph update), build the features, run the policy (eval mode,
inference_mode), pick the action. p50/p99 per scatter backend, beside the original's
workload re-measured here: a bare 3-layer GCN forward in train mode (64 features, 1,000
nodes, 3,000 random edges) with the same backend.

Control loop: on loopback, the time from Tolaria-style telemetry + EpochCompleted produced
to Tamiyo's decision visible to a read_committed consumer (commands share its transaction),
beside a plain produce -> consume round trip on the same broker.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid

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
from services.bench.results import BenchResult
from services.tamiyo.decider import Candidate, Decider, record
from services.tamiyo.policy_store import load_policy
from services.tamiyo.run_state import RunState
from services.tamiyo.scatter import ScatterBackend, available_backends

LAYERS, SEEDS_PER_LAYER, SKIPS = 250, 3, (1, 2, 4, 8, 16, 32)
EPOCHS = 60


class _OneKernel:
    def candidates(self, input_shape, output_shape):
        return [Candidate("k-bench", "bp-bench", "mlp")]


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


def measure_decisions(backend: ScatterBackend, epochs: int = EPOCHS) -> dict[str, float]:
    policy, record_ = load_policy()
    policy.scatter = backend
    decider = Decider(policy, record_.version, _OneKernel())
    run = RunState("bench")
    run.apply_session(_session(LAYERS, SEEDS_PER_LAYER, epochs))
    events = [_epoch_events(e, LAYERS, SEEDS_PER_LAYER) for e in range(epochs)]
    totals, updates, decides = [], [], []
    for epoch, (signals, done) in enumerate(events):
        start = time.perf_counter()
        for signal in signals:
            run.apply_health(signal)
        run.apply_epoch(done)
        ready = run.ready_epochs()
        middle = time.perf_counter()
        for e in ready:
            for action in decider.decide(run, e):
                record(run, action.decision)
        end = time.perf_counter()
        if epoch >= 5:  # warm-up
            totals.append((end - start) * 1000)
            updates.append((middle - start) * 1000)
            decides.append((end - middle) * 1000)
    graph_nodes = LAYERS * (1 + SEEDS_PER_LAYER)
    from services.tamiyo.features import build_graph

    edges = int(build_graph(run, epochs - 1).edge_index.shape[1])
    # The forward alone on the final graph, for the breakdown.
    graph = build_graph(run, epochs - 1)
    forwards = []
    for _ in range(30):
        start = time.perf_counter()
        policy.decide(graph.x, graph.edge_index)
        forwards.append((time.perf_counter() - start) * 1000)
    return {"p50": statistics.median(totals), "p99": _percentile(totals, 0.99),
            "update_p50": statistics.median(updates), "decide_p50": statistics.median(decides),
            "forward_p50": statistics.median(forwards[5:]), "nodes": graph_nodes, "edges": edges}


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


def measure_original_gcn(backend: ScatterBackend, nodes: int = 1000, edges: int = 3000, features: int = 64,
                         repeats: int = 100) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(nodes, features, generator=generator)
    edge_index = torch.randint(0, nodes, (2, edges), generator=generator)
    model = _GCN(features, backend).train()
    times = []
    for i in range(repeats + 10):
        start = time.perf_counter()
        model(x, edge_index)
        if i >= 10:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_decision_latency() -> list[BenchResult]:
    results = []
    for backend in available_backends():
        torch.manual_seed(0)
        d = measure_decisions(backend)
        gcn = measure_original_gcn(backend)
        results.append(BenchResult(
            f"Tamiyo decision incl. graph update, {d['nodes']} nodes / {d['edges']} edges ({backend.name})",
            "ms p50", d["p50"], "original workload: bare 3-layer GCN forward, train mode", gcn,
            higher_is_better=False, target=1.0,
            details={"p99_ms": round(d["p99"], 3), "graph_update_p50_ms": round(d["update_p50"], 3),
                     "features_forward_decide_p50_ms": round(d["decide_p50"], 3),
                     "policy_forward_p50_ms": round(d["forward_p50"], 3), "threads": torch.get_num_threads(),
                     "backend": backend.name},
        ))
    return results


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

    loop_ms, round_trip_ms = [], []
    try:
        reader.wait_for_assignment()
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
    return BenchResult(
        "Control loop: telemetry produced -> decision consumed (loopback)", "ms p95", _percentile(loop_ms, 0.95),
        "plain produce -> consume round trip", _percentile(round_trip_ms, 0.95), higher_is_better=False, target=50.0,
        details={"p50_ms": round(statistics.median(loop_ms), 2), "epochs": epochs,
                 "round_trip_p50_ms": round(statistics.median(round_trip_ms), 2)},
    )
