"""Tamiyo's bus adapter: run telemetry in, decisions + commands out, exactly once.

- Group ``tamiyo`` reads the five run-scoped input topics with the range assignor. The
  topics are co-partitioned, so every event of a run reaches the same instance.
- On every (re)assignment the instance forgets its state, reads its own past decisions
  for those partitions (up to the last stable offset), and reads the inputs again from the
  beginning: the state is a projection of the log. Epochs already decided are not decided
  again; the others are decided as soon as they are complete (see ``run_state``).
- Each batch is one Kafka transaction: decisions, commands, dead letters and the consumed
  offsets commit together. After ``kill -9`` the restarted instance (same ``--instance``,
  hence same transactional id) aborts the dangling transaction and rebuilds.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import torch
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from contracts import AdaptationDecision, OonaMessage, TopicName
from services.oona.admin import admin_client, end_offsets
from services.oona.codec import Codec
from services.oona.consumer import Delivered
from services.oona.errors import EsperError, FatalError
from services.oona.log_reader import read_range
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec
from services.oona.transactions import ExactlyOnceProcessor, Output
from services.tamiyo.decider import Action, Candidate, Decider, family_of, record
from services.tamiyo.policy_store import INITIAL_POLICY, load_policy
from services.tamiyo.run_state import RejectedEvent, Runs, RunState
from services.tamiyo.scatter import select_backend
from services.urza.catalog import Catalog, CatalogFollower

log = logging.getLogger(__name__)

ORPHAN_TIMEOUT_S = 10.0

INPUTS = (
    TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
    TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS,
)
_FOLD = {
    TopicName.TRAINING_SESSIONS.value: RunState.apply_session,
    TopicName.TELEMETRY_SEED_HEALTH.value: RunState.apply_health,
    TopicName.SYSTEM_EVENTS_EPOCH.value: RunState.apply_epoch,
    TopicName.LIFECYCLE_SEED_TRANSITIONS.value: RunState.apply_transition,
    TopicName.INNOVATION_FIELD_REPORTS.value: RunState.apply_report,
}


class CatalogChooser:
    """Kernels for a slot from Urza's catalogue: characterised, fitting, fastest first."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def candidates(self, input_shape: list[int], output_shape: list[int]) -> list[Candidate]:
        found = []
        for entry in self.catalog.query(input_shape=input_shape, output_shape=output_shape):
            blueprint = self.catalog.blueprints.get(entry.metadata.blueprint_id)
            if blueprint is not None:
                found.append(Candidate(entry.metadata.kernel_id, entry.metadata.blueprint_id,
                                       family_of(blueprint.blueprint.architecture)))
        return found


def _fatal(exc: Exception) -> bool:
    if isinstance(exc, FatalError):
        return True
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return bool(error is not None and hasattr(error, "fatal") and error.fatal())


def fold(run: RunState, topic: str, payload) -> None:
    """Apply one input event (``topic`` without prefix) to its run; RejectedEvent if unusable."""
    _FOLD[topic](run, payload)


class Tamiyo:
    def __init__(self, settings: KafkaSettings, codec: Codec, *, policy_path: Path | None = None,
                 instance: str = "1", scatter: str = "auto", device: str = "cpu",
                 orphan_timeout_s: float = ORPHAN_TIMEOUT_S) -> None:
        self.policy, self.record = load_policy(policy_path or INITIAL_POLICY)  # PolicyError before connecting
        backend, timings = select_backend(torch.device(device), scatter)
        self.policy.scatter = backend
        log.info("tamiyo policy=%s scatter=%s timings=%s", self.record.version, backend.name, timings)
        self.settings = settings
        self.codec = codec
        prefix = settings.topic_prefix
        self.prefix = prefix
        self.inputs = [topic_spec(t.value, prefix) for t in INPUTS]
        self.decisions = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, prefix)
        self.commands = topic_spec(TopicName.CONTROL_KASMINA_COMMANDS.value, prefix)
        self.catalog = CatalogFollower(settings, codec)
        self.decider = Decider(self.policy, self.record.version, CatalogChooser(self.catalog.catalog))
        self.runs = Runs()
        self.seen: set[str] = set()
        # Events of runs whose session has not arrived: (first seen, events).
        self.orphans: dict[str, tuple[float, list[Delivered]]] = {}
        self._reload: list[int] | None = None
        self.instance = instance
        self.orphan_timeout_s = orphan_timeout_s
        self.processor = ExactlyOnceProcessor(
            settings, codec, group_id=f"{prefix}tamiyo", transactional_id=f"{prefix}tamiyo-{instance}",
            inputs=self.inputs, handler=self.handle, after_batch=self.after_batch,
            dlq_topic=topic_spec(TopicName.DLQ.value, prefix).name,
            consumer_config={"partition.assignment.strategy": "range"}, on_assign=self._assigned,
        )
        self.decided = 0
        self.duplicates = 0
        self.latencies_ms: deque[float] = deque(maxlen=10_000)  # the latest decisions' latencies
        self._last_report = time.monotonic()

    # -- (re)building -----------------------------------------------------------------------------
    def _assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
        self._reset(sorted({tp.partition for tp in partitions}))

    def _reset(self, partitions: list[int]) -> None:
        self.runs = Runs()
        self.seen.clear()
        self.orphans.clear()
        self._reload = partitions
        log.info("tamiyo instance=%s rebuilding partitions=%s", self.instance, partitions)

    def _load_decisions(self) -> None:
        """Our own past decisions on the assigned partitions: what is already decided and commanded."""
        partitions, self._reload = self._reload or [], None
        wanted = [(self.decisions.name, p) for p in partitions]
        ends = end_offsets(admin_client(self.settings), wanted) if wanted else {}
        loaded = 0
        for msg in read_range(self.settings, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
            message = self.codec.decode(self.decisions, msg.value())
            record(self.runs.get(message.run_id), message.payload)
            loaded += 1
        log.info("tamiyo instance=%s loaded %d past decisions", self.instance, loaded)

    # -- per event ------------------------------------------------------------------------------
    def handle(self, delivered: Delivered) -> Iterator[Output]:
        if self._reload is not None:
            self._load_decisions()
        message = delivered.message
        if message.event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(message.event_id)
        run = self.runs.get(message.run_id)
        topic = delivered.topic[len(self.prefix):]
        try:
            fold(run, topic, message.payload)
        except RejectedEvent as exc:
            self.processor.consumer.reject(delivered, f"tamiyo: {exc}", "RejectedEvent")
            return
        if run.session is None:
            self.orphans.setdefault(run.run_id, (time.monotonic(), []))[1].append(delivered)
            return
        self.orphans.pop(run.run_id, None)
        yield from self._decide_ready(run, message.event_id)

    def _decide_ready(self, run: RunState, trace_id: str) -> Iterator[Output]:
        for epoch in run.ready_epochs():
            start = time.perf_counter()
            actions = self.decider.decide(run, epoch)
            self.latencies_ms.append((time.perf_counter() - start) * 1000)
            for action in actions:
                record(run, action.decision)
                yield from self._outputs(run.run_id, action, trace_id)
            self.decided += 1
        self.runs.forget_if_done(run)  # nothing left to decide for it

    def _outputs(self, run_id: str, action: Action, trace_id: str) -> Iterator[Output]:
        decision: AdaptationDecision = action.decision
        log.info("decision run_id=%s epoch=%d type=%s layer=%s seed=%s kernel=%s reason=%s", run_id, decision.epoch,
                 decision.adaptation_type.value, decision.layer_name, decision.seed_idx, decision.kernel_id,
                 decision.reason)
        yield self.decisions, self._envelope(self.decisions, run_id, decision.decision_id, trace_id, decision)
        if action.command is not None:
            yield self.commands, self._envelope(self.commands, run_id, action.command.command_id, trace_id,
                                                action.command)

    def _envelope(self, spec: TopicSpec, run_id: str, event_id: str, trace_id: str, payload) -> OonaMessage:
        return spec.message_type(event_id=event_id, sender_id=f"tamiyo-{self.instance}", topic=spec.name,
                                 run_id=run_id, trace_id=trace_id, payload=payload)

    def after_batch(self, batch: list[Delivered]) -> Iterator[Output]:
        """When caught up (an empty batch): events of runs that announced no session within
        ``orphan_timeout_s`` are dead-lettered."""
        self.catalog.refresh()
        if batch:
            return
        for run_id, (since, events) in list(self.orphans.items()):
            if time.monotonic() - since < self.orphan_timeout_s:
                continue
            for delivered in events:
                self.processor.consumer.reject(delivered, f"tamiyo: unknown run {run_id} (no training.sessions "
                                                          "event)", "UnknownRun")
            self.runs.forget(run_id)
            del self.orphans[run_id]
        yield from ()

    # -- the loop ----------------------------------------------------------------------------------
    def step(self) -> int:
        try:
            # gather: an epoch's telemetry and its EpochCompleted usually arrive within a few ms of
            # each other; one transaction for both saves a commit round trip on the control loop.
            handled = self.processor.process_batch(max_messages=500, timeout=0.2, gather_s=0.005)
        except (KafkaException, EsperError) as exc:
            if _fatal(exc):  # e.g. fenced by a newer instance with our transactional id: stop, be restarted
                raise FatalError(f"tamiyo instance {self.instance} cannot continue: {exc}") from None
            # The transaction was aborted and the offsets rewound; our in-memory state may hold the
            # aborted batch, so rebuild everything from the log.
            log.warning("tamiyo instance=%s batch failed (%s); rebuilding", self.instance, exc)
            self.processor.consumer.rewind_to_beginning()
            self._reset(sorted({tp.partition for tp in self.processor.consumer.assignment()}))
            return 0
        if time.monotonic() - self._last_report > 30:
            self._report()
        return handled

    def stats(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        return {
            "runs": len(self.runs.runs), "epochs_decided": self.decided, "duplicates_skipped": self.duplicates,
            "dead_lettered": self.processor.consumer.dead_lettered,
            "decision_ms_p50": statistics.median(lat) if lat else 0.0,
            "decision_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
        }

    def lag(self) -> int:
        positions = [tp for tp in self.processor.consumer.positions() if tp.offset >= 0]
        ends = end_offsets(admin_client(self.settings), [(tp.topic, tp.partition) for tp in positions])
        return sum(max(0, ends[(tp.topic, tp.partition)] - tp.offset) for tp in positions)

    def _report(self) -> None:
        self._last_report = time.monotonic()
        try:
            lag = self.lag()
        except KafkaException:
            lag = -1
        stats = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.stats().items())
        log.info("tamiyo health instance=%s lag=%d %s", self.instance, lag, stats)

    def close(self) -> None:
        self.processor.close()
        self.catalog.close()
