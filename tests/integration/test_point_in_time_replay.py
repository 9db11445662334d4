"""Point-in-time replay on a real broker: a run whose catalogue grows mid-run replays every decision, kernels too.

Tamiyo decides a 20-epoch spirals run with characterised kernels for its 2 -> 8 slots. Right after its first
germination a faster kernel of every blueprint is published (and Tamiyo's catalogue has it before the next
decision), so a later germination picks a kernel the first could not have. ``esper replay RUN --policy`` with the
policy that recorded the run decides every epoch as it was decided, kernels included, because each epoch is
decided with the catalogue as of the positions its decision recorded; the whole catalogue (as of the end of the
log, what a replay used before) would have chosen the faster kernel already for the first germination.
"""

from __future__ import annotations

import subprocess
import uuid

import duckdb

from contracts import (
    BlueprintSubmitted,
    CommandAction,
    CompilationOutcome,
    KernelCharacterized,
    KernelReady,
    TopicName,
)
from services.blueprints.compiler import compile_blueprint
from services.karn.starter_library import for_slot
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider, family_of
from services.tamiyo.policy_store import INITIAL_POLICY, load_policy
from services.tamiyo.recorded import load_recorded_runs, replay_decisions
from services.tamiyo.service import CatalogChooser
from services.tolaria.config import load_config
from services.tolaria.run import start_run
from services.urza.catalog import CatalogFollower
from services.urza.catalog_as_of import load_catalog_as_of, load_catalog_history
from tests.esper_cli import ESPER, REPO, esper_env
from tests.integration.test_tamiyo import EXAMPLE, run_messages, tamiyo_running
from tests.waiting import wait_until

EPOCHS = 20
DECISION_COLUMNS = "decision_id, epoch, adaptation_type, action, layer_id, seed_idx, blueprint_id, kernel_id"


def publish_kernel(kafka: KafkaSettings, blueprint, init_seed: int, latency_ms: float) -> str:
    """A kernel of ``blueprint`` (another init seed: another kernel id) on the four catalogue topics, characterised
    with ``latency_ms`` (set, not measured: which kernel is the fastest must not depend on the machine's load)."""
    kernel, seconds = compile_blueprint(blueprint, init_seed=init_seed)
    characterized = KernelCharacterized(kernel_id=kernel.kernel_id, blueprint_id=blueprint.blueprint_id, device="cpu",
                                        latency_ms_p50=latency_ms, latency_ms_p95=latency_ms, peak_memory_mb=0.1,
                                        passed=True)
    producer = OonaProducer(kafka, SingleObjectCodec())
    for topic, payload in (
        (TopicName.COMPILATION_BLUEPRINT_SUBMITTED, BlueprintSubmitted(blueprint_id=blueprint.blueprint_id,
                                                                       submitted_by="test", blueprint=blueprint)),
        (TopicName.LIBRARY_KERNELS, kernel),
        (TopicName.COMPILATION_KERNEL_READY, KernelReady(blueprint_id=blueprint.blueprint_id,
                                                         outcome=CompilationOutcome.READY, kernel=kernel.metadata,
                                                         compile_seconds=seconds)),
        (TopicName.VALIDATION_KERNEL_CHARACTERIZED, characterized),
    ):
        spec = topic_spec(topic.value, kafka.topic_prefix)
        producer.publish(spec, spec.message_type(sender_id="test", topic=spec.name, payload=payload))
    producer.flush()
    return kernel.kernel_id


def test_a_run_whose_catalogue_grows_replays_every_decision_with_its_kernel(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    # No width seeds: a live one would keep the layer's other slot from growing (and change its shapes).
    blueprints = [bp for bp in for_slot([2], [8]) if family_of(bp.architecture) != "width"]
    for bp in blueprints:
        publish_kernel(kafka, bp, init_seed=0, latency_ms=1.0)
    run_id = f"pitr-{uuid.uuid4().hex[:6]}"
    faster: list[str] = []

    with tamiyo_running(kafka) as tamiyo:
        decide = tamiyo._decide

        def tamiyo_has_the_faster_kernels() -> bool:
            tamiyo.catalog.refresh(0.1)
            kernels = tamiyo.catalog.catalog.kernels
            return all(k in kernels and kernels[k].characterization is not None for k in faster)

        def deciding_then_growing(run, epoch):
            """Tamiyo's own decision; after its first germination, the catalogue grows (in Tamiyo's thread, so
            the next decision is the first that can see the new kernels)."""
            actions = decide(run, epoch)
            if not faster and any(a.decision.action is CommandAction.GERMINATE for a in actions):
                faster.extend(publish_kernel(kafka, bp, init_seed=1, latency_ms=0.01) for bp in blueprints)
                wait_until(tamiyo_has_the_faster_kernels, timeout_s=30, what="Tamiyo's catalogue has them")
            return actions

        tamiyo._decide = deciding_then_growing  # type: ignore[method-assign]
        start_run(load_config(EXAMPLE).model_copy(update={"epochs": EPOCHS}), esper_settings, run_id=run_id,
                  progress=False)

    decisions = run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, run_id)
    germinations = [d for d in decisions if d.action is CommandAction.GERMINATE]
    print("germinations:", [(d.epoch, d.seed_idx, d.family, d.kernel_id) for d in germinations])
    assert {d.epoch for d in decisions} == set(range(EPOCHS))
    # The catalogue grew during the run: the first germination chose a kernel there from the start, a later one
    # one of the faster kernels published after it; every decision names the catalogue it was made with.
    assert len(germinations) >= 2 and faster
    first, later = germinations[0], germinations[1:]
    assert first.kernel_id not in faster and any(d.kernel_id in faster for d in later)
    assert all(d.catalog_positions for d in decisions)
    grown = {p.topic: p for p in later[-1].catalog_positions if p.topic == TopicName.LIBRARY_KERNELS.value}
    known = {p.topic: p for p in first.catalog_positions if p.topic == TopicName.LIBRARY_KERNELS.value}
    assert grown["library.kernels"].offset == known["library.kernels"].offset + len(faster)
    # The catalogue as of a decision's positions (what a fork or a tool calls) holds what that decision could choose.
    as_of_first = load_catalog_as_of(kafka, SingleObjectCodec(), first.catalog_positions)
    assert first.kernel_id in as_of_first.kernels and not set(faster) & set(as_of_first.kernels)

    # `esper replay RUN --policy` with the policy that decided live: every epoch, kernels included.
    out = tmp_path / "replay.duckdb"
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
                    ESPER_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([*ESPER, "replay", run_id, "--policy", str(INITIAL_POLICY), "--out", str(out),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"same as recorded in {EPOCHS}/{EPOCHS} epochs" in done.stdout, done.stdout
    assert f"{EPOCHS} epochs decided with the catalogue as of their recorded positions" in done.stdout, done.stdout
    with duckdb.connect(str(out), read_only=True) as con:
        real = con.execute(f"SELECT {DECISION_COLUMNS} FROM adaptation_decision ORDER BY decision_id").fetchall()
        would = con.execute(f"SELECT {DECISION_COLUMNS} FROM counterfactual_decisions ORDER BY decision_id").fetchall()
        assert con.execute("SELECT count(*), bool_and(same) FROM decision_comparison").fetchall() == [(EPOCHS, True)]
    assert would == real and len(real) >= EPOCHS

    # What the replay did before: the whole catalogue for every epoch picks a faster kernel at the first germination.
    policy, record = load_policy()
    recorded = load_recorded_runs(kafka, SingleObjectCodec(), [run_id])[run_id]
    history = load_catalog_history(kafka, SingleObjectCodec())
    at_the_end = replay_decisions(recorded, Decider(policy, record.version, CatalogChooser(history.whole())))
    then = next(d for d in at_the_end if d.decision_id == first.decision_id)
    assert then.kernel_id in faster
    # ...and as of the recorded positions, the same records as live, positions included.
    as_recorded = replay_decisions(recorded, Decider(policy, record.version, CatalogChooser(history.whole())),
                                   (history, CatalogChooser))
    assert [d.model_dump(exclude={"timestamp"}) for d in as_recorded] == \
        [d.model_dump(exclude={"timestamp"}) for d in recorded.decisions]

    # A restarted Tamiyo decides on with at least the catalogue its past decisions had (``reach`` after it read
    # them back); positions beyond what the log holds are not reached, and it says so.
    furthest: dict[tuple[str, int], int] = {}
    for d in decisions:
        for p in d.catalog_positions:
            furthest[(p.topic, p.partition)] = max(p.offset, furthest.get((p.topic, p.partition), 0))
    follower = CatalogFollower(kafka, SingleObjectCodec())
    try:
        assert follower.reach(furthest)
        assert set(faster) <= set(follower.catalog.kernels)
        assert not follower.reach({("library.kernels", 0): furthest[("library.kernels", 0)] + 1}, timeout_s=0.5)
    finally:
        follower.close()
