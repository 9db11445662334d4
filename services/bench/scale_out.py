"""Scale-out by partitions: many concurrent runs decided by several Tamiyo processes in one group.

``instances`` Tamiyo processes (``esper serve tamiyo --instance I``, as ``esper up`` runs them with
``ESPER_SERVICES__TAMIYO__INSTANCES``) share the run partitions of a fresh topic prefix on the
configured cluster (``esper bench`` on the local 3-node cluster: ``ESPER_BROKER__NODES=3``). First one
run alone (the baseline), then ``runs`` at once, each a real ``esper run`` process (spirals, few epochs:
on a small machine the runs' training is most of the load; they train at a lower priority, as in
``system_load``).

Measured from the log, so from outside the processes that decide: a decision's latency is its record's
timestamp minus that of the event that completed its epoch (its ``trace_id``), both producer create times
(the decision's is taken when it is produced in its transaction; the commit follows within the same
batch). Reported: p50 / p99 under load beside the single run's, the group's largest consumer lag sampled
every 0.5 s, the decisions each instance made, and whether every run completed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml
from confluent_kafka import OFFSET_BEGINNING

from services.bench.results import BenchResult
from services.bench.system_load import MAX_P99_RATIO, TRAINING_NICENESS, isolated_topics, run_concurrently
from services.core.paths import DEFAULT_RUN_CONFIG, REPO_ROOT
from services.oona.settings import KafkaSettings

INPUT_TOPICS = ("system.events.epoch", "telemetry.seed.health", "lifecycle.seed.transitions",
                "innovation.field_reports", "training.sessions")


def _env(kafka, workdir: Path) -> dict[str, str]:
    return dict(os.environ, ESPER_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix, ESPER_STATE_DIR=str(workdir / "state"),
                PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


def _start_tamiyos(kafka, workdir: Path, instances: int) -> list[subprocess.Popen]:
    processes = []
    for i in range(1, instances + 1):
        with open(workdir / f"tamiyo-{i}.log", "wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "services.cli", "-v", "serve", "tamiyo", "--instance", str(i),
                 "--scatter", "native"], env=_env(kafka, workdir), cwd=REPO_ROOT, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    return processes


def _partitions_held(workdir: Path, instances: int) -> set[int]:
    """The run partitions the instances hold, rebuilt, as their logs last said (an admin client's
    describe_consumer_groups timed out here while the group was stable)."""
    held: set[int] = set()
    for i in range(1, instances + 1):
        path = workdir / f"tamiyo-{i}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        rebuilt = [n for n, line in enumerate(lines) if "rebuilding partitions=" in line]
        if rebuilt and any("past decisions" in line for line in lines[rebuilt[-1]:]):
            held |= {int(p) for p in lines[rebuilt[-1]].rsplit("=", 1)[1].strip("[]").split(",") if p.strip()}
    return held


def _run_all(kafka, config: Path, count: int, workdir: Path, lag: Callable[[], int | None]
             ) -> tuple[float, list[str], int, int]:
    """``count`` runs at once; (seconds, run ids, runs completed, max lag seen)."""
    command = ["nice", "-n", str(TRAINING_NICENESS), sys.executable, "-m", "services.cli", "run", str(config), "-q"]
    run_ids = [f"scale-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    seconds, completed, max_lag = run_concurrently([[*command, "--run-id", run_id] for run_id in run_ids],
                                                   _env(kafka, workdir), lag)
    return seconds, run_ids, completed, max_lag


def _decision_latencies(kafka, run_ids: list[str]) -> tuple[list[float], Counter[str], int]:
    """(latency ms of each decision of the runs, decisions per instance, decision records doubled)."""
    from services.oona import clients
    from services.oona.admin import end_offsets, partitions_of
    from services.oona.codec import SingleObjectCodec
    from services.oona.log_reader import read_range
    from services.oona.topic_registry import topic_spec

    codec = SingleObjectCodec()
    wanted = {run_id.encode() for run_id in run_ids}
    prefix = kafka.topic_prefix
    specs = {spec.name: spec for spec in (topic_spec(t, prefix) for t in (*INPUT_TOPICS, "control.tamiyo.decisions"))}
    client = clients.admin(kafka)
    ends = end_offsets(client, partitions_of(client, list(specs)))
    created: dict[str, float] = {}
    decisions = []
    for msg in read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
        if msg.key() not in wanted:
            continue
        message = codec.decode(specs[msg.topic() or ""], msg.value())
        stamp = msg.timestamp()[1]
        if msg.topic() == prefix + "control.tamiyo.decisions":
            decisions.append((message.event_id, message.trace_id, message.sender_id, stamp))
        else:
            created[message.event_id] = stamp
    latencies = [float(stamp - created[trace]) for _, trace, _, stamp in decisions if trace in created]
    doubled = len(decisions) - len({event_id for event_id, _, _, _ in decisions})
    return sorted(latencies), Counter(sender for _, _, sender, _ in decisions), doubled


def _quantile(values: list[float], q: int) -> float:
    return round(values[min(len(values) - 1, len(values) * q // 100)], 1) if values else 0.0


def bench_scale_out(kafka: KafkaSettings, lag_of: Callable[[KafkaSettings], int | None], runs: int = 30,
                    epochs: int = 4, instances: int = 3) -> BenchResult:
    """``lag_of(kafka)``: the Tamiyo group's consumer lag (events) on the prefixed topics, None if unknown."""
    from services.oona.admin import delete_topics, wait_for_broker

    brokers = wait_for_broker(kafka)
    kafka, topics = isolated_topics(kafka, "scale")
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tamiyos = _start_tamiyos(kafka, workdir, instances)
        try:
            deadline = time.monotonic() + 600
            while _partitions_held(workdir, instances) != set(range(kafka.run_partitions)):
                if time.monotonic() > deadline or any(p.poll() is not None for p in tamiyos):
                    tail = (workdir / "tamiyo-1.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the Tamiyo instances did not form their group: {tail}")
                time.sleep(0.5)  # polling the group's state
            raw = yaml.safe_load(DEFAULT_RUN_CONFIG.read_text())
            raw["epochs"] = epochs
            config = workdir / "run.yaml"
            config.write_text(yaml.safe_dump(raw))

            def lag() -> int | None:
                return lag_of(kafka)
            _, single_ids, _, _ = _run_all(kafka, config, 1, workdir, lag)
            single, _, _ = _decision_latencies(kafka, single_ids)
            load.append(os.getloadavg()[0])
            seconds, run_ids, completed, max_lag = _run_all(kafka, config, runs, workdir, lag)
            load.append(os.getloadavg()[0])
            time.sleep(2.0)  # the last epochs' decisions: a run does not wait for its last one
            loaded, per_instance, doubled = _decision_latencies(kafka, run_ids)
        finally:
            for process in tamiyos:
                process.send_signal(signal.SIGTERM)
            for process in tamiyos:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            delete_topics(kafka, [t.name for t in topics])
    p99, single_p99 = _quantile(loaded, 99), _quantile(single, 99)
    return BenchResult(
        f"Scale-out: {runs} concurrent runs, {instances} Tamiyo instances on {brokers} broker(s) "
        "(event -> decision, from the log)", "ms p99", p99, "one run alone", single_p99, higher_is_better=False,
        max_overhead=MAX_P99_RATIO - 1,
        details={"runs": runs, "runs_completed": completed, "epochs_per_run": epochs, "instances": instances,
                 "brokers": brokers, "run_partitions": kafka.run_partitions, "wall_seconds": round(seconds, 1),
                 "decisions": len(loaded), "decisions_doubled": doubled,
                 "decisions_per_instance": dict(sorted(per_instance.items())),
                 "decision_p50_ms": _quantile(loaded, 50), "decision_p99_ms": p99, "decision_max_ms": _quantile(
                     loaded, 100), "single_p50_ms": _quantile(single, 50), "single_p99_ms": single_p99,
                 "p99_over_single": round(p99 / single_p99, 2) if single_p99 else None,
                 "max_consumer_lag_events": max_lag,
                 "load_average_1m": " -> ".join(f"{x:.2f}" for x in load), "training_niceness": TRAINING_NICENESS},
    )
