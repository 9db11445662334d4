"""Tamiyo on the real broker: it drives a run's whole seed lifecycle, exactly once, reproducibly."""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING

from contracts import AdaptationType, CommandAction, SeedState, TopicName
from services.blueprints.starter import for_slot
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.log_reader import read_range
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider
from services.tamiyo.policy_store import load_policy
from services.tamiyo.recorded import load_recorded_runs, replay_decisions
from services.tamiyo.service import CatalogChooser, Tamiyo
from services.tolaria.config import load_config
from services.tolaria.run import start_run
from services.urabrask.seed_library import publish_characterised_kernel
from services.urza.catalog_as_of import load_catalog_history
from tests.samples import message_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spirals-tamiyo.yaml"


@contextlib.contextmanager
def tamiyo_running(kafka: KafkaSettings, instance: str = "t1", **options):
    """Tamiyo stepping in a background thread until the block ends."""
    service = Tamiyo(kafka, SingleObjectCodec(), instance=instance, **options)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                service.step()
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=30)
        service.close()
    assert not errors, errors


def publish_slot_kernels(kafka: KafkaSettings, input_shape: list[int], output_shape: list[int]) -> list[str]:
    return [
        publish_characterised_kernel(kafka, bp, prefix=kafka.topic_prefix) for bp in for_slot(input_shape, output_shape)
    ]


def run_messages(kafka: KafkaSettings, topic: TopicName, run_id: str) -> list:
    spec = topic_spec(topic.value, kafka.topic_prefix)
    admin = clients.admin(kafka)
    ends = end_offsets(admin, partitions_of(admin, [spec.name]), committed_only=False)
    codec = SingleObjectCodec()
    messages = read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})
    return [codec.decode(spec, m.value()).payload for m in sorted(messages, key=lambda m: m.offset())
            if m.key() == run_id.encode()]


def comparable(decisions) -> list[dict]:
    return [d.model_dump(exclude={"timestamp"}) for d in decisions]


def test_tamiyo_drives_the_whole_lifecycle_and_a_replay_decides_the_same(esper_settings):
    kafka = esper_settings.kafka
    publish_slot_kernels(kafka, [2], [8])
    cfg = load_config(EXAMPLE).model_copy(update={"epochs": 24})
    run_id = f"tamiyo-{uuid.uuid4().hex[:6]}"
    with tamiyo_running(kafka) as tamiyo:
        result = start_run(cfg, esper_settings, run_id=run_id, progress=False)
        stats = tamiyo.stats()
    decisions = run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, run_id)
    commands = run_messages(kafka, TopicName.CONTROL_KASMINA_COMMANDS, run_id)
    transitions = run_messages(kafka, TopicName.LIFECYCLE_SEED_TRANSITIONS, run_id)
    print(f"tamiyo stats {stats}; run {result.seed_states} val={result.validation_accuracy:.3f}")

    # One decision record per epoch at least, none twice; every command answers one of them.
    assert {d.epoch for d in decisions} == set(range(cfg.epochs))
    assert len({d.decision_id for d in decisions}) == len(decisions)
    assert len({c.command_id for c in commands}) == len(commands)
    assert {c.decision_id for c in commands} <= {d.decision_id for d in decisions}
    actions = {c.action for c in commands}
    assert {CommandAction.GERMINATE, CommandAction.ADVANCE, CommandAction.FOSSILIZE} <= actions, actions
    # ...and Tolaria carried them out: germinated, grafted and fossilized by Tamiyo's own commands.
    by_command = {c.command_id: c for c in commands}
    done = {(t.to_state, by_command[t.command_id].action) for t in transitions if t.command_id in by_command}
    assert (SeedState.GERMINATED, CommandAction.GERMINATE) in done
    assert (SeedState.GRAFTING, CommandAction.ADVANCE) in done
    assert (SeedState.FOSSILIZED, CommandAction.FOSSILIZE) in done, done
    assert result.seed_states.get("fossilized", 0) >= 1
    assert all(d.policy_version.startswith("gnn-") for d in decisions)
    grow = next(d for d in decisions if d.adaptation_type is AdaptationType.ADD_SEED)
    assert grow.kernel_id and grow.features and 0 <= grow.confidence <= 1

    # Replay: the same policy over the recorded run decides exactly what was decided live.
    policy, record = load_policy()
    recorded = load_recorded_runs(kafka, SingleObjectCodec(), [run_id])[run_id]
    history = load_catalog_history(kafka, SingleObjectCodec())
    replayed = replay_decisions(recorded, Decider(policy, record.version, CatalogChooser(history.whole())),
                                (history, CatalogChooser))
    assert comparable(replayed) == comparable(recorded.decisions)


def test_recorded_runs_leave_out_an_event_without_a_run_id_as_the_live_service_does(esper_settings):
    """The live service dead-letters a run-scoped event without a run_id; a recorded run must not fold it either."""
    kafka = esper_settings.kafka
    codec = SingleObjectCodec()
    spec = topic_spec(TopicName.TELEMETRY_SEED_HEALTH.value, kafka.topic_prefix)
    producer = OonaProducer(kafka, codec)
    try:
        producer.produce_raw(spec.name, codec.encode(spec, message_for(spec, run_id=None)), b"no-run")
        producer.publish(spec, message_for(spec, run_id="run-with-id"))
        producer.flush()
    finally:
        producer.close()
    assert set(load_recorded_runs(kafka, codec)) == {"run-with-id"}


CHECKERBOARD = Path(__file__).resolve().parents[2] / "examples" / "checkerboard-adaptive.yaml"


def test_tamiyo_widens_an_under_capacity_layer_by_itself(esper_settings):
    """The 8-unit checkerboard host lacks units: its capacity signal is high, and the shipped policy (no script)
    grows a width seed there; once fossilized, the layer is wider and Tamiyo asks for kernels of its new shape."""
    kafka = esper_settings.kafka
    for width in (8, 24, 40):  # the host's shape and those a widening by 16 or 32 units leaves
        publish_slot_kernels(kafka, [2], [width])
    cfg = load_config(CHECKERBOARD).model_copy(update={"epochs": 16})
    run_id = f"widen-{uuid.uuid4().hex[:6]}"
    with tamiyo_running(kafka):
        result = start_run(cfg, esper_settings, run_id=run_id, progress=False)
    decisions = run_messages(kafka, TopicName.CONTROL_TAMIYO_DECISIONS, run_id)
    transitions = run_messages(kafka, TopicName.LIFECYCLE_SEED_TRANSITIONS, run_id)
    print(f"run {result.seed_states} val={result.validation_accuracy:.3f} params={result.parameter_count}; "
          f"grown: {[(d.epoch, d.family, d.reason) for d in decisions if d.command_id]}")
    widths = [d for d in decisions if d.action is CommandAction.GERMINATE and d.family == "width"]
    assert widths, [d.reason for d in decisions]
    germinated = {t.kernel_id for t in transitions if t.to_state is SeedState.GERMINATED}
    assert widths[0].kernel_id in germinated  # Kasmina took it: the shapes Tamiyo believed were the layer's
    fossils = [t for t in transitions if t.to_state is SeedState.FOSSILIZED and t.kernel_id in
               {d.kernel_id for d in widths}]
    if fossils:  # the counterfactual gate passed: the host is wider now (8 -> 12 or 16 units, and the head)
        assert result.parameter_count > 2 * 8 + 8 + 8 * 2 + 2
        later = [d for d in decisions if d.epoch > fossils[0].epoch and d.action is CommandAction.GERMINATE]
        assert all(d.kernel_id in germinated or d.epoch >= cfg.epochs - 1 for d in later)
