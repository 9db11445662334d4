"""``esper bench``: runs the benchmarks against the configured cluster (starting the local broker if needed)."""

from __future__ import annotations

from pathlib import Path

from services.bench import (
    bus_throughput,
    nissa_ingest,
    nissa_replay,
    scale_out,
    start_up,
    start_up_curves,
    system_load,
    tamiyo_latency,
    training_overhead,
)
from services.bench.results import BenchResult, print_table, write_json
from services.cli.cluster import ensure_cluster
from services.cli.settings import load_settings
from services.core.paths import REPO_ROOT

NEEDS_BROKER = ("encode", "produce", "consume", "control", "ingest", "load", "replay", "curve", "scale")


def run_benchmarks(events: int, output: str, only: list[str]) -> int:
    settings = load_settings()
    if not only or any(word in o for o in only for word in NEEDS_BROKER):
        ensure_cluster(settings)

    def wanted(name: str) -> bool:
        return not only or any(o in name for o in only)

    results: list[BenchResult] = []
    if wanted("start-up"):
        results.extend(start_up.bench_start_up(REPO_ROOT))
    if wanted("startup-curve"):
        results.extend(start_up_curves.bench_start_up_curves(settings.kafka))
    if wanted("encode"):
        results.append(bus_throughput.bench_encode(events))
    if wanted("produce") or wanted("consume"):
        produced, spec, _ = bus_throughput.bench_produce(settings.kafka, events)
        results.append(produced)
        results.append(bus_throughput.bench_consume(settings.kafka, spec, events))
    if wanted("ingest"):
        results.extend(nissa_ingest.bench_ingest(settings.kafka, events))
    if wanted("replay"):
        results.extend(nissa_replay.bench_replay(settings.kafka))
    if wanted("tamiyo"):
        results.extend(tamiyo_latency.bench_decision_latency())
    if wanted("load"):
        results.append(system_load.bench_system_load(settings.kafka))
    if wanted("scale-out"):  # several Tamiyo processes: the local cluster of ESPER_BROKER__NODES (3) fits it
        from services.cli.status import group_lag

        results.append(scale_out.bench_scale_out(settings.kafka, lambda kafka: group_lag(kafka, "tamiyo").events))
    if wanted("control"):
        results.append(tamiyo_latency.bench_control_loop(settings.kafka))
    if wanted("training"):
        results.append(training_overhead.bench_training_overhead())
    print_table(results)
    write_json(results, Path(output))
    print(f"results written to {output}")
    return 0
