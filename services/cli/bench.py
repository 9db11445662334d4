"""``esper bench``: runs the benchmarks against the configured cluster (starting the local broker if needed)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
from services.bench.profiling import profile_call
from services.bench.results import BenchResult, print_table, write_json
from services.cli.cluster import ensure_cluster
from services.cli.settings import load_settings
from services.core.paths import REPO_ROOT

T = TypeVar("T")
NEEDS_BROKER = ("encode", "produce", "consume", "control", "ingest", "load", "replay", "curve", "scale")


def run_benchmarks(events: int, output: str, only: list[str], profile: str | None = None) -> int:
    """Each wanted figure in turn; with ``profile``, each under cProfile (``services.bench.profiling``),
    its top functions in ``profile/<figure>.txt``."""
    settings = load_settings()
    if not only or any(word in o for o in only for word in NEEDS_BROKER):
        ensure_cluster(settings)

    def wanted(name: str) -> bool:
        return not only or any(o in name for o in only)

    def measured(figure: str, work: Callable[[], T]) -> T:
        return profile_call(figure, work, Path(profile)) if profile else work()

    def produce_and_consume() -> list[BenchResult]:  # consume reads what produce wrote: a profile of each
        produced, spec = measured("produce", lambda: bus_throughput.bench_produce(settings.kafka, events)[:2])
        return [produced, *measured("consume", lambda: [bus_throughput.bench_consume(settings.kafka, spec, events)])]

    def scaled_out() -> list[BenchResult]:  # several Tamiyo processes: the local cluster of ESPER_BROKER__NODES (3)
        from services.cli.status import group_lag

        return [scale_out.bench_scale_out(settings.kafka, lambda kafka: group_lag(kafka, "tamiyo").events)]

    # (figure, wanted, work); a figure of None profiles its parts itself.
    figures: list[tuple[str | None, bool, Callable[[], list[BenchResult]]]] = [
        ("start-up", wanted("start-up"), lambda: start_up.bench_start_up(REPO_ROOT)),
        ("startup-curve", wanted("startup-curve"), lambda: start_up_curves.bench_start_up_curves(settings.kafka)),
        ("encode", wanted("encode"), lambda: [bus_throughput.bench_encode(events)]),
        (None, wanted("produce") or wanted("consume"), produce_and_consume),
        ("ingest", wanted("ingest"), lambda: nissa_ingest.bench_ingest(settings.kafka, events)),
        ("replay", wanted("replay"), lambda: nissa_replay.bench_replay(settings.kafka)),
        ("tamiyo", wanted("tamiyo"), tamiyo_latency.bench_decision_latency),
        ("load", wanted("load"), lambda: [system_load.bench_system_load(settings.kafka)]),
        ("scale-out", wanted("scale-out"), scaled_out),
        ("control", wanted("control"), lambda: [tamiyo_latency.bench_control_loop(settings.kafka)]),
        ("training", wanted("training"), lambda: [training_overhead.bench_training_overhead()]),
    ]
    results: list[BenchResult] = []
    failed: dict[str, str] = {}
    for figure, run, work in figures:
        if run:
            try:
                results.extend(measured(figure, work) if figure else work())
            except Exception as exc:  # one figure's failure (a timeout on a loaded machine) keeps the others
                name = figure or "produce, consume"
                where = traceback.extract_tb(exc.__traceback__)[-1]  # its own line: a bare TimeoutError says little
                failed[name] = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
                print(f"esper bench: {name} failed: {failed[name]}", file=sys.stderr)
            write_json(results, Path(output), failed)  # after each figure: a run cut short keeps what it measured
    print_table(results)
    write_json(results, Path(output), failed)
    print(f"results written to {output}")
    return 1 if failed else 0
