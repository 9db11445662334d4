"""The running system under faults: poison on every topic, every service killed mid-run, the broker killed
mid-run, logs written by older schema versions. Each case prints its figures and is bounded in time.

None of them can pass vacuously: each first waits for its precondition (a kill lands only after the run
published epoch k, and while it is still running) and then asserts that the fault really happened (the
service was restarted, the poison was dead-lettered by each service that reads its topic). What must not
be lost is counted from outside the log: the epochs of the config, the events the run says it emitted
(its last line), and the health signals, transitions and field reports each EpochCompleted declares;
the log and Nissa must each hold exactly those."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services.cli.supervisor import SERVICES
from services.nissa.tables import table_name
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.log_reader import read_range
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TOPICS, avro_topics
from tests.e2e.poison_corpus import SERVICE_GROUPS
from tests.esper_cli import ESPER, REPO
from tests.fixtures.write_fixture_logs import LOGS_DIR, read_fixture_log
from tests.waiting import wait_until

EXAMPLE = REPO / "examples" / "spirals-tamiyo.yaml"
RUN_TOPICS = ("training.sessions", "telemetry.seed.health", "system.events.epoch", "lifecycle.seed.transitions",
              "innovation.field_reports", "control.tamiyo.decisions", "control.kasmina.commands")
TABLE_OF = {"training.sessions": "training_session_event", "telemetry.seed.health": "health_signal",
            "system.events.epoch": "epoch_completed", "lifecycle.seed.transitions": "seed_transition",
            "innovation.field_reports": "field_report", "control.tamiyo.decisions": "adaptation_decision",
            "control.kasmina.commands": "kasmina_command"}


def kafka_of(system) -> KafkaSettings:
    return system.kafka


def config(tmp_path: Path, epochs: int) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["epochs"] = epochs
    # Five times the example's data: an epoch lasts long enough for the test to see each one go by
    # (a few polls of the log per epoch), so kills land between epochs of a run that is still going.
    raw["data"]["spiral_points"] = 5 * raw["data"]["spiral_points"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_run(system, tmp_path: Path, epochs: int) -> tuple[str, subprocess.Popen]:
    run_id = f"fault-{uuid.uuid4().hex[:6]}"
    with open(tmp_path / f"{run_id}.log", "wb") as out:
        process = subprocess.Popen([*ESPER, "run", str(config(tmp_path, epochs)), "--run-id", run_id, "-q"],
                                   env=system.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return run_id, process


def finish(process: subprocess.Popen, tmp_path: Path, run_id: str, timeout: float = 600) -> str:
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:  # never leave a run behind to load the machine for later tests
            process.kill()
            process.wait()
    output = (tmp_path / f"{run_id}.log").read_text()
    assert code == 0, output[-3000:]
    return output


def log_events(kafka: KafkaSettings, run_id: str) -> dict[str, list[str]]:
    """Event ids of ``run_id`` per run-scoped topic, as committed on the log."""
    codec = SingleObjectCodec()
    specs = {spec.name: spec for spec in TOPICS if spec.name in RUN_TOPICS}
    client = clients.admin(kafka)
    ends = end_offsets(client, partitions_of(client, list(specs)))
    out: dict[str, list[str]] = {name: [] for name in specs}
    for msg in read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
        if msg.key() == run_id.encode():
            out[msg.topic()].append(codec.decode(specs[msg.topic()], msg.value()).event_id)
    return out


def wait_for_nissa(system, run_id: str, expected: dict[str, list[str]], timeout_s: float = 120) -> dict[str, tuple]:
    """Until Nissa's tables hold exactly the run's events: (rows, distinct event ids) per table."""
    deadline = time.monotonic() + timeout_s
    # One read-only query per poll: every reader briefly keeps Nissa's writer out of the file.
    query = " UNION ALL ".join(f"SELECT '{topic}' AS t, count(*) AS n, count(DISTINCT event_id) AS d FROM {table} "
                               f"WHERE run_id = '{run_id}'" for topic, table in TABLE_OF.items())
    while True:
        got = {row["t"]: (row["n"], row["d"]) for row in system.sql(query)}
        if all(got[t] == (len(ids), len(set(ids))) for t, ids in expected.items()):
            return got
        assert time.monotonic() < deadline, f"nissa has {got}, the log has { {t: len(i) for t, i in expected.items()} }"


TOLARIA_TOPICS = ("training.sessions", "telemetry.seed.health", "system.events.epoch",
                  "lifecycle.seed.transitions", "innovation.field_reports")
DECLARED = {"telemetry.seed.health": "health_signals", "lifecycle.seed.transitions": "seed_transitions",
            "innovation.field_reports": "field_reports"}


def emitted_by_run(output: str) -> int:
    """The number of events the run says it published (its last line: ``events=N skipped_as_already_on_log=M``)."""
    found = re.search(r"events=(\d+) skipped_as_already_on_log=(\d+)", output)
    assert found, f"the run did not say what it emitted: {output[-500:]}"
    return int(found.group(1)) + int(found.group(2))


def declared_counts(kafka: KafkaSettings, run_id: str) -> dict[str, int]:
    """What the run's EpochCompleted events declare it published before each of them, summed per topic."""
    codec = SingleObjectCodec()
    spec = next(s for s in TOPICS if s.name == "system.events.epoch")
    client = clients.admin(kafka)
    ends = end_offsets(client, partitions_of(client, [spec.name]))
    totals = dict.fromkeys(DECLARED, 0)
    for msg in read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
        if msg.key() == run_id.encode():
            payload = codec.decode(spec, msg.value()).payload
            for topic, attribute in DECLARED.items():
                totals[topic] += getattr(payload, attribute)
    return totals


def expected_of_run(kafka: KafkaSettings, run_id: str, epochs: int, output: str) -> dict[str, int]:
    """How many events of each Tolaria topic the run published, from outside the log's own listing: the
    config's epochs, the counts the epochs declare, and the run's own total for the sessions."""
    expected = {"system.events.epoch": epochs, **declared_counts(kafka, run_id)}
    expected["training.sessions"] = emitted_by_run(output) - sum(expected.values())
    assert expected["training.sessions"] >= 1, f"the run's total does not cover its epochs: {expected}, {output[-300:]}"
    return expected


def assert_exactly_once(kafka: KafkaSettings, run_id: str, epochs: int, output: str) -> dict[str, list[str]]:
    """The log holds each event of the run once, and exactly as many as the run says it published."""
    events = log_events(kafka, run_id)
    for topic, ids in events.items():
        assert len(ids) == len(set(ids)), f"duplicates on {topic}"
    expected = expected_of_run(kafka, run_id, epochs, output)
    on_log = {topic: len(events[topic]) for topic in TOLARIA_TOPICS}
    assert on_log == expected, f"the log has {on_log}, the run published {expected}"
    return events


def published_epochs(kafka: KafkaSettings, run_id: str) -> int:
    """Epochs of ``run_id`` committed on system.events.epoch so far."""
    client = clients.admin(kafka)
    ends = end_offsets(client, partitions_of(client, ["system.events.epoch"]))
    return sum(1 for msg in read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})
               if msg.key() == run_id.encode())


LAST_DECISION_WAIT_S = 30.0


def wait_for_decisions(system, run_id: str, epochs: int, timeout_s: float = 120) -> set[int]:
    """Until Tamiyo has decided every epoch of the run but the last (in Nissa); the epochs decided.

    The last epoch's decision, which the run no longer waits for, is then waited for up to
    LAST_DECISION_WAIT_S, so a log read right after does not miss a decision Nissa counts a moment later."""
    deadline = time.monotonic() + timeout_s
    settled: float | None = None
    while True:
        decided = {r["e"] for r in system.sql(f"SELECT DISTINCT epoch AS e FROM adaptation_decision "
                                               f"WHERE run_id = '{run_id}'")}
        if decided >= set(range(epochs - 1)):
            settled = settled or time.monotonic() + LAST_DECISION_WAIT_S
            if epochs - 1 in decided or time.monotonic() >= settled:
                return decided
            continue
        assert time.monotonic() < deadline, (f"Tamiyo left epochs of {run_id} undecided: "
                                             f"{sorted(set(range(epochs - 1)) - decided)}")


class EpochWatch:
    """Counts a run's epochs as they are committed, incrementally (one open consumer), so a test sees
    each epoch go by; ``published_epochs`` stays the exact count, read while the run is held still."""

    def __init__(self, kafka: KafkaSettings, run_id: str) -> None:
        self.key = run_id.encode()
        self.count = 0
        self._consumer = clients.consumer(kafka, {
            "group.id": f"epoch-watch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": "read_committed"})
        client = clients.admin(kafka)
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                               for t, p in partitions_of(client, ["system.events.epoch"])])

    def wait_for(self, k: int, run: subprocess.Popen, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count < k:
            assert run.poll() is None, f"the run ended before epoch {k}"
            assert time.monotonic() < deadline, f"the run did not publish epoch {k} within {timeout_s:g} s"
            self.count += sum(1 for m in self._consumer.consume(100, 0.05) if m.error() is None and m.key() == self.key)

    def close(self) -> None:
        self._consumer.close()


@contextlib.contextmanager
def paused(run: subprocess.Popen):
    """The run process stopped (SIGSTOP) for the duration of the block, then continued."""
    os.kill(run.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if run.poll() is None:  # reaped meanwhile: it had already ended (the block's assertion says so)
            os.kill(run.pid, signal.SIGCONT)


def restarts(system) -> dict[str, int]:
    return {name: info["restarts"] for name, info in system.status()["services"].items()}


def supervised_pid(system, name: str) -> int | None:
    return system.status()["services"][name]["pid"]


def test_every_service_killed_in_turn_mid_run(system, tmp_path):
    epochs = 30
    before = restarts(system)
    run_id, run = start_run(system, tmp_path, epochs)
    kafka = kafka_of(system)
    recoveries, killed_at, killed_pid, killed_time = {}, {}, {}, {}
    watch = EpochWatch(kafka, run_id)
    try:
        for name in SERVICES:
            # Precondition: the run is under way (epoch k published, k rising with each kill) and not over.
            watch.wait_for(max(killed_at.values(), default=1) + 1, run)
            # The run is held still (SIGSTOP, well under any client timeout) while the kill lands, so the
            # kill is after epoch k and before the end however loaded the machine is; then it goes on
            # while the service is down and restarting.
            with paused(run):
                published = published_epochs(kafka, run_id)
                pid = supervised_pid(system, name)
                assert pid, f"{name} is not running"
                assert run.poll() is None and published < epochs, f"the run was over before {name} was killed"
                os.kill(pid, signal.SIGKILL)
            killed_at[name], killed_pid[name], killed_time[name] = published, pid, time.monotonic()
        for name in SERVICES:
            while supervised_pid(system, name) in (None, killed_pid[name]):
                assert time.monotonic() - killed_time[name] < 120, f"{name} was not restarted"
            recoveries[name] = round(time.monotonic() - killed_time[name], 1)
    except BaseException:
        run.kill()
        run.wait()
        raise
    finally:
        watch.close()
    output = finish(run, tmp_path, run_id)
    events = assert_exactly_once(kafka, run_id, epochs, output)
    decisions = system.sql(f"SELECT decision_epoch AS e, count(DISTINCT decision_id) AS n FROM adaptation_history "
                           f"WHERE run_id = '{run_id}' GROUP BY 1")
    rows = wait_for_nissa(system, run_id, events)
    # Tezzeret's answers only: the soak before this case put test-made KernelReady events on the topic.
    kernels = system.sql("SELECT count(*) AS n, count(DISTINCT blueprint_id) AS d FROM kernel_ready "
                         "WHERE sender_id = 'tezzeret'")[0]
    after = restarts(system)
    print(f"killed after epoch (of {epochs}): {killed_at}; restarted after kill -9 (s): {recoveries}; "
          f"events on the log: { {t: len(i) for t, i in events.items()} }; nissa rows (rows, distinct): {rows}; "
          f"restarts before/after: {before}/{after}; {output.strip()[-200:]}")
    assert list(killed_at.values()) == sorted(killed_at.values()) and max(killed_at.values()) < epochs
    assert {d["e"] for d in decisions} >= set(range(epochs - 1)), "an epoch was left undecided"
    assert kernels["n"] == kernels["d"], "a blueprint was compiled twice"
    # Each kill landed: the supervisor restarted every service at least once during this case.
    assert all(after[n] - before[n] >= 1 for n in SERVICES), (before, after)


def test_poison_on_every_topic_is_dead_lettered_and_the_run_is_unaffected(system, tmp_path):
    kafka = kafka_of(system)
    before = restarts(system)
    epochs = 8
    run_id, run = start_run(system, tmp_path, epochs)
    producer = OonaProducer(kafka, SingleObjectCodec())
    marker = uuid.uuid4().hex[:8]
    for spec in TOPICS:
        producer.produce_raw(spec.name, f"poison-{marker}".encode(), key=b"poison-" + marker.encode())
    producer.flush()
    output = finish(run, tmp_path, run_id)
    events = assert_exactly_once(kafka, run_id, epochs, output)
    wait_for_nissa(system, run_id, events)
    wait_for_decisions(system, run_id, epochs)  # the controller was not thrown off either
    # Who must dead-letter each topic's poison: Nissa (every Avro topic) and each service reading it.
    expected = {(spec.name, group) for spec in TOPICS if not spec.raw
                for group in ("nissa", *SERVICE_GROUPS.get(spec.name, ()))}
    deadline = time.monotonic() + 120
    while True:
        rows = system.sql("SELECT source_topic, origin, consumer_group, reason FROM dead_letters "
                          f"WHERE original_key = CAST('poison-{marker}' AS BLOB)")
        got = {(r["source_topic"], r["consumer_group"]) for r in rows if r["reason"]}
        if got >= expected:
            break
        assert time.monotonic() < deadline, f"not dead-lettered (topic, service): {sorted(expected - got)}"
    after = restarts(system)
    print(f"poison: {len(TOPICS)} topics, {len(rows)} dead letters: "
          f"{sorted((r['source_topic'], r['consumer_group'], r['origin']) for r in rows)}; "
          f"restarts before/after: {before}/{after}")
    assert all(r["reason"] for r in rows)
    assert after == before, f"a service restarted on the poison: {before} -> {after}"


def test_logs_written_by_older_schema_versions_are_ingested(system):
    kafka = kafka_of(system)
    before = restarts(system)
    codec = SingleObjectCodec()  # its schema store knows every committed version
    producer = OonaProducer(kafka, codec)
    # The event ids each fixture log (one per record and schema version) holds, by Nissa table.
    expected: dict[tuple[str, str], list[str]] = {}
    for spec in avro_topics():
        for path in sorted((LOGS_DIR / spec.record_name).glob("v*.log")):
            values = read_fixture_log(path)
            expected[(table_name(spec), path.stem)] = [codec.decode(spec, v).event_id for v in values]
            for value in values:
                producer.produce_raw(spec.name, value, key=f"fixture-{path.stem}".encode())
    producer.flush()
    assert {v for _, v in expected} > {"v1"}, "only one schema version in the mix: nothing older is tested"
    query = " UNION ALL ".join(
        f"SELECT '{table}' AS t, '{version}' AS v, count(*) AS n, count(DISTINCT event_id) AS d FROM {table} "
        f"WHERE event_id IN ({', '.join(repr(i) for i in ids)})" for (table, version), ids in expected.items())
    deadline = time.monotonic() + 120
    while True:
        found = {(r["t"], r["v"]): (r["n"], r["d"]) for r in system.sql(query)}
        short = {key: (found.get(key), len(ids)) for key, ids in expected.items()
                 if found.get(key) != (len(ids), len(ids))}
        if not short:
            break
        assert time.monotonic() < deadline, f"fixture events not in DuckDB, (rows, distinct) vs sent: {short}"
    old = system.sql("SELECT count(*) AS n FROM dead_letters "  # Nissa could not read one of them
                     "WHERE origin = 'nissa' AND CAST(original_key AS VARCHAR) LIKE 'fixture-v%'")[0]["n"]
    print(f"fixture events produced={sum(len(i) for i in expected.values())} in {len(expected)} (record, version) "
          f"logs; versions after v1: {sorted(k for k in expected if k[1] != 'v1')}; "
          f"undecodable for Nissa={old}")
    assert old == 0
    system.wait_all_up(60)  # and no service fell over them
    assert restarts(system) == before


@pytest.mark.timeout(900)  # its own bounded waits: the run, Nissa catching up, services back up
def test_broker_killed_mid_run_and_restarted(system, tmp_path):
    from services.cli.settings import EsperSettings
    from services.oona.local_broker import LocalKafka

    settings = EsperSettings(state_dir=system.state_dir)
    settings.broker.port = int(system.env["ESPER_BROKER__PORT"])
    settings.broker.controller_port = int(system.env["ESPER_BROKER__CONTROLLER_PORT"])
    broker = LocalKafka(settings.local_brokers()[0])
    epochs = 20
    run_id, run = start_run(system, tmp_path, epochs)
    try:
        outage(system, broker, run, run_id, tmp_path, epochs)
    except BaseException:
        run.kill()
        run.wait()
        raise
    output = finish(run, tmp_path, run_id, timeout=900)
    kafka = kafka_of(system)
    events = assert_exactly_once(kafka, run_id, epochs, output)
    rows = wait_for_nissa(system, run_id, events, timeout_s=240)
    # Tamiyo came back too (it rebuilds from its decisions after the outage): every epoch gets decided.
    decided = wait_for_decisions(system, run_id, epochs)
    system.wait_all_up(180)
    print(f"events on the log: { {t: len(i) for t, i in events.items()} }; nissa rows (rows, distinct): {rows}; "
          f"epochs decided: {len(decided)}/{epochs}; "
          f"restarts: { {n: s['restarts'] for n, s in system.status()['services'].items()} }; "
          f"{output.strip()[-160:]}")


def outage(system, broker, run: subprocess.Popen, run_id: str, tmp_path: Path, epochs: int) -> None:
    """Kill the broker mid-run, keep it down until the run noticed, start it again."""
    kafka = kafka_of(system)
    # Mid-run: once the run has published a few epochs. Every look at the log holds the run still, and
    # between looks it runs for a slice of 0.2 s, so however fast its epochs go by (a quiet machine ran
    # all 20 during one unpaused look) the kill lands within a slice of the 4th, never after the last.
    deadline = time.monotonic() + 300
    while True:
        with paused(run):
            assert run.poll() is None, "the run was over before the kill"
            published = published_epochs(kafka, run_id)
            if published >= 4:
                assert published < epochs, "the run was over before the kill"
                os.kill(broker.pid(), signal.SIGKILL)
                killed = time.monotonic()
                while broker.pid() is not None:
                    assert time.monotonic() - killed < 30
                break
        assert time.monotonic() < deadline, "the run did not get going"
        try:
            run.wait(timeout=0.2)  # the run's slice; it ends early only when the run ends (the next look says so)
        except subprocess.TimeoutExpired:
            pass
    # The outage lasts until the run has felt it: its clients report the broker unreachable.
    run_log = tmp_path / f"{run_id}.log"
    noticed = ("transient Kafka error", "code=_TRANSPORT", "_ALL_BROKERS_DOWN",
               "commit waiting for the group coordinator")  # blocked in its commit of the consumed commands
    while not any(marker in run_log.read_text() for marker in noticed):
        if time.monotonic() - killed >= 120 and run.poll() is None:
            # Rare here (once in many runs): say where the run is. `kill -USR1` makes it print every
            # thread's stack into its log (faulthandler, registered by `esper`).
            os.kill(run.pid, signal.SIGUSR1)
            wait_until(lambda: "most recent call first" in run_log.read_text(), 30, "the run's thread stacks")
            raise AssertionError("the run never noticed the broker was gone; its log ends:\n"
                                 + run_log.read_text()[-6000:])
        assert run.poll() is None, "the run ended during the outage"
    restarted = system.esper("broker", "start", timeout=180)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    print(f"broker down {time.monotonic() - killed:.1f}s")
