"""The system under load: concurrent Tamiyo-driven runs sharing one Tamiyo, its latency and lag.

Each run is a real `esper run` process (spirals, seeds managed by Tamiyo, bounded wait for
its decisions) on a fresh topic prefix; Tamiyo runs in this process with a library of
characterised kernels for the slot. First one run alone (the baseline), then ``runs``
at once. Reported: Tamiyo's decision latency p95 under load beside the single-run p95, the
largest consumer lag sampled every 0.5 s, and whether every run completed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from services.bench.results import BenchResult
from services.core.paths import DEFAULT_RUN_CONFIG, REPO_ROOT


def _run_all(kafka, prefix: str, config: Path, count: int, workdir: Path, tamiyo) -> tuple[float, int, int]:
    """Start ``count`` runs at once; returns (seconds, runs completed, max lag seen)."""
    import os

    env = dict(os.environ, ESPER_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers, ESPER_KAFKA__TOPIC_PREFIX=prefix,
               ESPER_STATE_DIR=str(workdir / "state"), PYTHONPATH=str(REPO_ROOT))
    start = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(config), "-q",
                                   "--run-id", f"load-{uuid.uuid4().hex[:8]}"], env=env, cwd=REPO_ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    max_lag = 0
    while any(p.poll() is None for p in processes):
        max_lag = max(max_lag, tamiyo.lag())
        time.sleep(0.5)  # the lag sampling interval
    return time.monotonic() - start, sum(p.returncode == 0 for p in processes), max_lag


def bench_system_load(kafka, runs: int = 10, epochs: int = 12) -> BenchResult:
    from services.blueprints.starter import for_slot
    from services.oona.admin import delete_topics, ensure_topics
    from services.oona.codec import SingleObjectCodec
    from services.oona.topic_registry import all_topics
    from services.tamiyo.service import Tamiyo
    from services.urabrask.seed_library import publish_characterised_kernel

    prefix = f"load.{uuid.uuid4().hex[:8]}."
    kafka = kafka.model_copy(update={"topic_prefix": prefix})
    topics = all_topics(prefix)
    ensure_topics(kafka, topics)
    for blueprint in for_slot([2], [8]):
        publish_characterised_kernel(kafka, blueprint, prefix=prefix)
    tamiyo = Tamiyo(kafka, SingleObjectCodec(), instance="load", scatter="native")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            tamiyo.step()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            raw = yaml.safe_load(DEFAULT_RUN_CONFIG.read_text())
            raw["epochs"] = epochs
            config = workdir / "run.yaml"
            config.write_text(yaml.safe_dump(raw))
            _run_all(kafka, prefix, config, 1, workdir, tamiyo)
            single = tamiyo.stats()["decision_ms_p99"]
            tamiyo.latencies_ms.clear()
            seconds, completed, max_lag = _run_all(kafka, prefix, config, runs, workdir, tamiyo)
            loaded = tamiyo.stats()
    finally:
        stop.set()
        thread.join(timeout=30)
        tamiyo.close()
        delete_topics(kafka, [t.name for t in topics])
    return BenchResult(
        f"Tamiyo decision under load: {runs} concurrent runs", "ms p99", loaded["decision_ms_p99"],
        "one run alone", single, higher_is_better=False,
        details={"runs_completed": completed, "runs": runs, "epochs_per_run": epochs, "wall_seconds": round(seconds, 1),
                 "decision_p50_ms": round(loaded["decision_ms_p50"], 2), "max_consumer_lag_events": max_lag,
                 "epochs_decided": loaded["epochs_decided"]},
    )
