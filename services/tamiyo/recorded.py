"""Recorded runs read back from the log, and Tamiyo's decisions replayed over them.

A replay folds every event of the run, then decides epoch by epoch in order, recording
each decision before the next, exactly as the live service does when events arrive one by
one (its decisions only look at events of epochs <= the one decided). Each epoch is decided
with Urza's catalogue as of the positions the run's own decision of that epoch recorded
(``catalogs``), not as it is at the end of the log. So replaying a run with the policy that
recorded it reproduces its decisions, kernels included; with another policy it shows what
that policy would have done with the same kernels at hand (counterfactual replay: nothing is sent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING

from contracts import AdaptationDecision, TopicName
from services.core.errors import DecodeError, EsperError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import Codec
from services.oona.log_reader import read_range
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider, KernelChooser, record
from services.tamiyo.run_state import RejectedEvent, RunState
from services.urza.catalog import Catalog
from services.urza.catalog_as_of import CatalogHistory

RUN_TOPICS = (
    TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
    TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS, TopicName.CONTROL_TAMIYO_DECISIONS,
)


@dataclass
class RecordedRun:
    run_id: str
    events: dict[str, list] = field(default_factory=dict)  # topic (no prefix) -> payloads in log order

    def of(self, topic: TopicName) -> list:
        return self.events.get(topic.value, [])

    @property
    def decisions(self) -> list[AdaptationDecision]:
        return self.of(TopicName.CONTROL_TAMIYO_DECISIONS)


class UnknownRunError(EsperError):
    pass


def load_recorded_runs(settings: KafkaSettings, codec: Codec, run_ids: Iterable[str] | None = None
                       ) -> dict[str, RecordedRun]:
    """Every event of the given runs (all runs when None) on the run-scoped topics, in log order."""
    wanted = set(run_ids) if run_ids is not None else None
    specs = {topic_spec(t.value, settings.topic_prefix).name: (t.value, topic_spec(t.value, settings.topic_prefix))
             for t in RUN_TOPICS}
    client = clients.admin(settings)
    ends = end_offsets(client, partitions_of(client, list(specs)))
    messages = read_range(settings, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})
    runs: dict[str, RecordedRun] = {}
    seen: set[tuple[str, str]] = set()
    for msg in sorted(messages, key=lambda m: (m.topic(), m.partition(), m.offset())):
        topic = msg.topic()
        assert topic is not None  # every record read has its topic
        name, spec = specs[topic]
        try:
            message = codec.decode(spec, msg.value())
        except DecodeError:
            continue  # dead-lettered by the services that consumed it
        run_id = message.run_id
        if not run_id:
            continue  # the live service dead-letters an event without a run_id: no run folds it
        if wanted is not None and run_id not in wanted:
            continue
        if (run_id, message.event_id) in seen:
            continue  # the live service skips a duplicate and dead-letters a conflict: neither is folded
        seen.add((run_id, message.event_id))
        runs.setdefault(run_id, RecordedRun(run_id)).events.setdefault(name, []).append(message.payload)
    missing = sorted((wanted or set()) - set(runs))
    if missing:
        raise UnknownRunError(f"no events on the log for run(s) {', '.join(missing)}")
    return runs


def fold_run(recorded: RecordedRun) -> RunState:
    """The run's state with every input event folded in (unusable events skipped, as the service rejects them)."""
    from services.tamiyo.service import fold

    run = RunState(recorded.run_id)
    for topic in RUN_TOPICS[:-1]:
        if topic is TopicName.TELEMETRY_SEED_HEALTH:  # the session is folded: one batch, refused ones skipped
            run.apply_health_batch(recorded.of(topic))
            continue
        for payload in recorded.of(topic):
            try:
                fold(run, topic.value, payload)
            except RejectedEvent:
                pass
    return run


def recorded_positions(recorded: RecordedRun) -> dict[int, list]:
    """Epoch -> the catalogue positions the run's decision of that epoch recorded (epochs whose decisions
    recorded none, i.e. written before AdaptationDecision v3, are absent)."""
    positions: dict[int, list] = {}
    for decision in recorded.decisions:
        if decision.catalog_positions:
            positions.setdefault(decision.epoch, decision.catalog_positions)
    return positions


def replay_decisions(recorded: RecordedRun, decider: Decider,
                     catalogs: tuple[CatalogHistory, Callable[[Catalog], KernelChooser]] | None = None
                     ) -> list[AdaptationDecision]:
    """What ``decider`` decides over the recorded run, epoch by epoch.

    ``catalogs`` (the catalogue topics' history, a chooser over a catalogue): each epoch is decided with the
    catalogue as of the positions its recorded decision names; an epoch with none recorded, with the whole
    catalogue. Without it, ``decider``'s own chooser decides every epoch.
    """
    run = fold_run(recorded)
    positions = recorded_positions(recorded) if catalogs is not None else {}
    whole: KernelChooser | None = None
    decisions = []
    for epoch in run.ready_epochs():
        if catalogs is not None:
            history, chooser_of = catalogs
            if epoch in positions:
                decider.chooser = chooser_of(history.at(positions[epoch]))
            else:
                whole = whole or chooser_of(history.whole())
                decider.chooser = whole
        for action in decider.decide(run, epoch):
            record(run, action.decision)
            decisions.append(action.decision)
    return decisions
