"""Scale-out by partitions on the local 3-node cluster: three Tamiyo instances and two Tezzeret workers,
each service one consumer group (``ESPER_SERVICES__TAMIYO__INSTANCES=3``, ``..._TEZZERET__INSTANCES=2``),
several runs at once. Mid-run, with blueprints just submitted, the Tamiyo instance deciding a chosen run
and one Tezzeret worker are killed (``kill -9``): their partitions move (to the others, or to the
restarted instance, whichever the group's rebalance gives them to), and nothing may be lost or doubled.

Counted from the log, not from the services' word: every epoch of every run decided (but the last, as in
``test_faults``), no decision id twice and each (run, epoch) decided by one instance; every blueprint
submitted answered once by Tezzeret; each run's events exactly once on the log and in Nissa. Printed: the
take-over time (kill -> the next decision of a run the killed instance was deciding; it includes the
run's own next epoch), who took over, the decisions per (run, epoch), the kernels compiled vs distinct.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services.blueprints.files import load_blueprints
from services.karn.service import submit
from services.oona import clients
from services.oona.admin import partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from tests.e2e.conftest import E2E_CLUSTER_PORT, System, running_system
from tests.e2e.test_faults import assert_exactly_once, finish, restarts, wait_for_nissa
from tests.e2e.test_faults import config as run_config
from tests.esper_cli import ESPER, REPO
from tests.waiting import wait_until

NODES = 3
TAMIYOS, TEZZERETS = 3, 2
RUNS, EPOCHS = 4, 16
BLUEPRINTS = 6


@pytest.fixture(scope="module")
def scaled_system(tmp_path_factory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("e2e-scale") / "state", E2E_CLUSTER_PORT, nodes=NODES,
                        heap="320m", ESPER_SERVICES__TAMIYO__INSTANCES=str(TAMIYOS),
                        ESPER_SERVICES__TEZZERET__INSTANCES=str(TEZZERETS)) as system:
        yield system


@dataclass(frozen=True)
class Seen:
    """A record of a control or compilation topic as committed: its key fields and when it was written."""
    key: str  # the run (decisions) or the blueprint (kernels)
    epoch: int
    event_id: str
    sender: str
    written_at: float  # the producer's timestamp, seconds since the epoch


class Watch:
    """A topic's committed records, read incrementally from the beginning (one open consumer)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.spec = topic_spec(topic)
        self.codec = SingleObjectCodec()
        self.seen: list[Seen] = []
        self._consumer = clients.consumer(kafka, {
            "group.id": f"scale-watch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": "read_committed"})
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                               for t, p in partitions_of(clients.admin(kafka), [self.spec.name])])

    def poll(self) -> list[Seen]:
        for msg in self._consumer.consume(500, 0.2):
            if msg.error() is not None:
                continue
            message = self.codec.decode(self.spec, msg.value())
            payload = message.payload
            # Kernels by blueprint; decisions by run (a decision names a blueprint too when it germinates).
            key = payload.blueprint_id if self.spec.name == "compilation.kernel.ready" else message.run_id
            self.seen.append(Seen(key,
                                  getattr(payload, "epoch", -1), message.event_id, message.sender_id,
                                  msg.timestamp()[1] / 1000))
        return self.seen

    def close(self) -> None:
        self._consumer.close()


def start_runs(system: System, tmp_path: Path) -> dict[str, subprocess.Popen]:
    config = run_config(tmp_path, EPOCHS)  # five times the example's data: epochs long enough to see go by
    runs = {}
    for _ in range(RUNS):
        run_id = f"scale-{uuid.uuid4().hex[:6]}"
        with open(tmp_path / f"{run_id}.log", "wb") as out:
            runs[run_id] = subprocess.Popen([*ESPER, "run", str(config), "--run-id", run_id, "-q"], env=system.env,
                                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return runs


def blueprint_file(tmp_path: Path) -> Path:
    """Blueprints no one has submitted yet (odd widths: not the starter library's), for the Linear 2 -> 8 slot."""
    salt = uuid.uuid4().int % 50
    items = [{"name": f"scale-{i}", "description": "scale-out case", "created_by": "user",
              "architecture": {"input_shape": [2], "output_shape": [8],
                               "layers": [{"op": "linear", "width": 101 + 2 * (salt * BLUEPRINTS + i)},
                                          {"op": "relu"}, {"op": "linear", "width": 8}]}}
             for i in range(BLUEPRINTS)]
    path = tmp_path / "blueprints.yaml"
    path.write_text(yaml.safe_dump(items))
    return path


def instance_pid(system: System, service: str, instance: str) -> int | None:
    return system.status()["services"][service]["instances"][instance]["pid"]


def pause_all(runs: dict[str, subprocess.Popen], sig: int) -> None:
    for run in runs.values():
        if run.poll() is None:
            os.kill(run.pid, sig)


@pytest.mark.timeout(1500)
def test_a_tamiyo_instance_and_a_tezzeret_worker_killed_mid_run(scaled_system, tmp_path):
    system, kafka = scaled_system, scaled_system.kafka
    status = system.status()["services"]
    assert len(status["tamiyo"]["instances"]) == TAMIYOS and len(status["tezzeret"]["instances"]) == TEZZERETS
    before = restarts(system)
    decisions = Watch(kafka, "control.tamiyo.decisions")
    kernels = Watch(kafka, "compilation.kernel.ready")
    runs = start_runs(system, tmp_path)
    try:
        # Precondition: every run decided at least twice by now, none near its end (checked while held still).
        def decided_twice() -> bool:
            assert all(r.poll() is None for r in runs.values()), "a run ended before the kills"
            counts = Counter(s.key for s in decisions.poll())
            return all(counts[run_id] >= 2 for run_id in runs)
        wait_until(decided_twice, 600, "two decisions of every run")
        # The runs are held still (SIGSTOP) only for the instant of the kills, well under any client's session
        # timeout. Blueprints submitted then, in-process: Tezzeret is compiling them when its worker dies.
        blueprints = load_blueprints(blueprint_file(tmp_path))
        submitted = {bp.blueprint_id for bp in blueprints}
        pause_all(runs, signal.SIGSTOP)
        try:
            assert all(r.poll() is None for r in runs.values()), "a run ended before the kills"
            last = {}  # run -> (its last decided epoch, who decided it) before the kill
            for seen in decisions.poll():
                if seen.key in runs and seen.epoch >= last.get(seen.key, (-1, ""))[0]:
                    last[seen.key] = (seen.epoch, seen.sender)
            assert max(epoch for epoch, _ in last.values()) < EPOCHS - 3, f"the runs were too far along: {last}"
            chosen = min(last)
            victim = last[chosen][1].removeprefix("tamiyo-")
            moved = sorted(r for r, (_, sender) in last.items() if sender == f"tamiyo-{victim}")
            submit(kafka, SingleObjectCodec(), blueprints, submitted_by="user")
            tamiyo_pid, tezzeret_pid = instance_pid(system, "tamiyo", victim), instance_pid(system, "tezzeret", "1")
            assert tamiyo_pid and tezzeret_pid
            os.kill(tamiyo_pid, signal.SIGKILL)
            os.kill(tezzeret_pid, signal.SIGKILL)
            killed_at = time.time()
            answered_before = len(submitted & {s.key for s in kernels.poll()})
        finally:
            pause_all(runs, signal.SIGCONT)

        def taken_over() -> dict[str, Seen] | None:
            after = {}
            for seen in decisions.poll():
                if seen.key in moved and seen.epoch > last[seen.key][0] and seen.key not in after:
                    after[seen.key] = seen
            return after if len(after) == len(moved) else None
        next_decisions = wait_until(taken_over, 600, "the next decision of each run the killed instance decided")
        wait_until(lambda: instance_pid(system, "tamiyo", victim) not in (None, tamiyo_pid), 120,
                   "the killed Tamiyo instance restarted")
        outputs = {run_id: finish(run, tmp_path, run_id, timeout=900) for run_id, run in runs.items()}
    except BaseException:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
        raise

    # Every epoch of every run decided (the last one may be decided after the run ended: not waited for).
    missing: list[tuple[str, int]] = []

    def all_decided() -> dict[tuple[str, int], list[Seen]] | None:
        by_epoch: dict[tuple[str, int], list[Seen]] = defaultdict(list)
        for seen in decisions.poll():
            if seen.key in runs:
                by_epoch[(seen.key, seen.epoch)].append(seen)
        missing[:] = [(r, e) for r in runs for e in range(EPOCHS - 1) if (r, e) not in by_epoch]
        return None if missing else by_epoch
    try:
        by_epoch = wait_until(all_decided, 240, "every epoch of every run decided")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: undecided (run, epoch) {missing}; killed tamiyo-{victim} (deciding "
                             f"{moved}, last epochs decided before the kill {last}) at {killed_at:.1f}; "
                             f"next decisions {next_decisions}") from None
    records = [s for group in by_epoch.values() for s in group]
    doubled = len(records) - len({s.event_id for s in records})
    deciders = {key: {s.sender for s in group} for key, group in by_epoch.items()}
    per_epoch = Counter(len(group) for group in by_epoch.values())

    def all_answered() -> list[Seen] | None:
        found = [s for s in kernels.poll() if s.sender == "tezzeret"]
        return found if submitted <= {s.key for s in found} else None
    answers = wait_until(all_answered, 600, "every blueprint submitted answered")
    compiled = Counter(s.key for s in answers)
    decisions.close()
    kernels.close()

    for run_id, output in outputs.items():
        events = assert_exactly_once(kafka, run_id, EPOCHS, output)
        wait_for_nissa(system, run_id, events, timeout_s=240)
    after = restarts(system)
    takeover = {run_id: f"{seen.written_at - killed_at:.1f}s by {seen.sender} (epoch {seen.epoch})"
                for run_id, seen in next_decisions.items()}
    print(f"\n{RUNS} runs x {EPOCHS} epochs, {TAMIYOS} Tamiyo + {TEZZERETS} Tezzeret on {NODES} brokers; killed "
          f"tamiyo-{victim} (deciding {', '.join(moved)}) and tezzeret-1; take-over (kill -> next decision): "
          f"{takeover}; decision records {len(records)}, distinct ids {len(records) - doubled}, doubled {doubled}; "
          f"(run, epoch) pairs {len(by_epoch)}, decision records per pair {dict(sorted(per_epoch.items()))}, "
          f"pairs decided by more than one instance "
          f"{sum(len(s) > 1 for s in deciders.values())}; kernels answered {sum(compiled.values())} for "
          f"{len(compiled)} distinct blueprints ({len(submitted)} submitted just before the kill, "
          f"{answered_before} of them answered by then); "
          f"restarts {before} -> {after}")
    assert doubled == 0, "a decision was made twice"
    assert all(len(s) == 1 for s in deciders.values()), {k: s for k, s in deciders.items() if len(s) > 1}
    assert all(n == 1 for n in compiled.values()), {k: n for k, n in compiled.items() if n > 1}
    assert after["tamiyo"] > before["tamiyo"] and after["tezzeret"] > before["tezzeret"], (before, after)
