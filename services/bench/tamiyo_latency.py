"""Tamiyo decision latency: a full policy decision on a 1,000-node model graph, per scatter backend.

The original design quoted 4.24 ms for a bare 3-layer GCN forward pass in train mode; this
measures the whole decision (encoder, 3 message-passing layers with mean+max aggregation,
readout, all heads) in eval mode under inference_mode, with both backends side by side.
"""

from __future__ import annotations

import statistics
import time

import torch

from services.bench.results import BenchResult
from services.tamiyo.policy import TamiyoPolicy, chain_graph
from services.tamiyo.scatter import available_backends

NODES = 1000
FEATURES = 16
RUNS = 200


def _p50(policy: TamiyoPolicy, x, edges) -> float:
    for _ in range(10):
        policy.decide(x, edges)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        policy.decide(x, edges)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_decision_latency() -> list[BenchResult]:
    x, edges = chain_graph(NODES, FEATURES)
    p50 = {}
    for backend in available_backends():
        torch.manual_seed(0)
        p50[backend.name] = _p50(TamiyoPolicy(FEATURES, hidden=64, layers=3, scatter=backend), x, edges)
    other = "torch_scatter" if "torch_scatter" in p50 else "native"
    return [BenchResult(
        "Tamiyo decision, 1000-node graph (native scatter)", "ms p50", p50["native"], f"{other} scatter", p50[other],
        higher_is_better=False, target=1.0,
        details={"edges": int(edges.shape[1]), "hidden": 64, "layers": 3, "threads": torch.get_num_threads(),
                 **{f"p50_ms_{k}": round(v, 4) for k, v in p50.items()}},
    )]
