"""Tamiyo's bus adapter: run telemetry in, decisions + commands out, exactly once.

- Group ``tamiyo`` reads the five run-scoped input topics with the range assignor. The
  topics are co-partitioned, so every event of a run reaches the same instance.
- On every (re)assignment the instance forgets its state, reads its own past decisions
  for those partitions (up to the last stable offset, a chunk per step: see ``decision_log``;
  input events that arrive meanwhile are held), and reads the inputs again from the
  beginning: the state is a projection of the log. Epochs already decided are not decided
  again; the others are decided as soon as they are complete (see ``run_state``).
- Total over the log: an event is folded, skipped (an exact duplicate of its id, a late event of
  a forgotten run) or dead-lettered with a reason (unusable, an event id conflict, no session
  within ``orphan_timeout_s``); an undecodable record on our own decisions topic is dead-lettered
  once and skipped (``decision_log``). Deciding never raises (``decider``).
- Policies: every instance follows ``library.policies`` and ``library.policy.promotions`` (``policy_topics``,
  ``policy_registry``) and decides each run with the version the run names, else the one promoted when the run
  was first decided; a version it cannot load answers the epoch with a ``no_op`` saying why. A refused policy
  record is dead-lettered once, by the instance holding run partition 0 (``_dead_letter_policies``).
- Memory: runs are forgotten when done or failed (``run_state``); a failed run resumed after it
  was forgotten makes the instance rebuild, since its history is needed to decide again.
- Each batch that decides is one Kafka transaction: decisions, commands, dead letters and the
  consumed offsets commit together (every run whose epoch completed in the batch, one commit);
  a batch of telemetry alone defers its offsets to the next (``transactions``). After ``kill -9``
  the restarted instance (same ``--instance``, hence same transactional id) aborts the dangling
  transaction and rebuilds.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from contracts import AdaptationDecision, CatalogPosition, OonaMessage, TopicName
from contracts.blueprint_ir import DEPTH, WIDTH
from services.core.errors import EsperError, FatalError, KafkaClientError
from services.oona import clients
from services.oona.admin import OffsetReader
from services.oona.codec import Codec
from services.oona.consumer import Delivered
from services.oona.messages import position_of
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec
from services.oona.transactions import TXN_CALL_TIMEOUT_S, ExactlyOnceProcessor, Output
from services.tamiyo.decider import Action, Candidate, Decider, family_of, idle_action, record
from services.tamiyo.decision_log import CHUNK as DECISIONS_CHUNK
from services.tamiyo.decision_log import DecisionLogReader, examined_offsets, parse_decision
from services.tamiyo.policy import use_inference_threads
from services.tamiyo.policy_registry import POLICIES_KEPT_LOADED, PolicyRegistry
from services.tamiyo.policy_store import INITIAL_POLICY, PolicyError, load_policy
from services.tamiyo.policy_topics import PolicyFollower
from services.tamiyo.run_state import RejectedEvent, Runs, RunState, content_digest
from services.tamiyo.scatter import select_backend
from services.urza.catalog import Catalog, CatalogFollower

log = logging.getLogger(__name__)

ORPHAN_TIMEOUT_S = 10.0
REACH_TIMEOUT_S = 10.0  # how long a rebuild waits for its catalogue to reach its past decisions' positions

# A decision's control loop: the event completing its epoch waits (created -> consumed: the sender's
# linger, the broker, the fetch, the batch before it), the batch's events are folded, it is decided,
# the batch's housekeeping (``after_batch``: the catalogue's refresh) done, the outputs produced,
# its offsets sent and the transaction committed; total: created -> committed. Per batch: records
# consumed and decisions made.
LOOP_STAGES = ("wait", "fold", "decide", "after_batch", "produce", "send_offsets", "commit", "total", "batch_records",
               "batch_decisions")

INPUTS = (
    TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
    TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS,
)
_FOLD: dict[str, Callable[[RunState, Any], object]] = {
    TopicName.TRAINING_SESSIONS.value: RunState.apply_session,
    TopicName.TELEMETRY_SEED_HEALTH.value: RunState.apply_health,
    TopicName.SYSTEM_EVENTS_EPOCH.value: RunState.apply_epoch,
    TopicName.LIFECYCLE_SEED_TRANSITIONS.value: RunState.apply_transition,
    TopicName.INNOVATION_FIELD_REPORTS.value: RunState.apply_report,
}


class CatalogChooser:
    """Kernels for a slot from Urza's catalogue: characterised, fitting, fastest first; the catalogue's positions
    are recorded on each decision, so a replay rebuilds the very catalogue it was made with."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def candidates(self, input_shape: list[int], output_shape: list[int]) -> list[Candidate]:
        """Side branches and width seeds map the slot's input to its output; a depth block maps its output
        to itself (and only depth blocks are taken from that query)."""
        found = []
        for shapes, depth in (((input_shape, output_shape), False), ((output_shape, output_shape), True)):
            for entry in self.catalog.query(input_shape=shapes[0], output_shape=shapes[1]):
                blueprint = self.catalog.blueprints.get(entry.metadata.blueprint_id)
                if blueprint is not None and (blueprint.blueprint.architecture.kind == DEPTH) == depth:
                    found.append(Candidate(entry.metadata.kernel_id, entry.metadata.blueprint_id,
                                           family_of(blueprint.blueprint.architecture)))
        return found

    def units(self, kernel_id: str) -> int:
        kernel = self.catalog.kernels.get(kernel_id)
        blueprint = self.catalog.blueprints.get(kernel.metadata.blueprint_id) if kernel is not None else None
        if blueprint is None or blueprint.blueprint.architecture.kind != WIDTH:
            return 0
        return blueprint.blueprint.architecture.layers[0].width or 0

    def positions(self) -> list[CatalogPosition]:
        return self.catalog.position_list()


def _fatal(exc: Exception) -> bool:
    return isinstance(exc, FatalError) or clients.is_fatal(exc)


# The run-scoped events that name a seed slot (``RunState.refused_before_session`` kinds).
_SLOT_EVENT_KINDS = {TopicName.TELEMETRY_SEED_HEALTH.value: "health",
                     TopicName.LIFECYCLE_SEED_TRANSITIONS.value: "transition"}


def fold(run: RunState, topic: str, payload) -> None:
    """Apply one input event (``topic`` without prefix) to its run; RejectedEvent if unusable."""
    _FOLD[topic](run, payload)


class Tamiyo:
    def __init__(self, settings: KafkaSettings, codec: Codec, *, policy_path: Path | None = None,
                 instance: str = "1", scatter: str = "auto", device: str = "cpu",
                 orphan_timeout_s: float = ORPHAN_TIMEOUT_S) -> None:
        # The shipped policy (or ``policy_path``): known without the topics, promoted while the log promotes none.
        shipped, shipped_record = load_policy(policy_path or INITIAL_POLICY)  # PolicyError before connecting
        use_inference_threads()  # before timing the backends: they are timed as they will run
        backend, timings = select_backend(torch.device(device), scatter)
        self.scatter = backend
        shipped.scatter = backend
        self.settings = settings
        self._offsets = OffsetReader(settings)  # end offsets through a leader's loss
        self.codec = codec
        prefix = settings.topic_prefix
        self.prefix = prefix
        self.inputs = [topic_spec(t.value, prefix) for t in INPUTS]
        self.decisions = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, prefix)
        self.commands = topic_spec(TopicName.CONTROL_KASMINA_COMMANDS.value, prefix)
        self.catalog = CatalogFollower(settings, codec)
        self.chooser = CatalogChooser(self.catalog.catalog)
        self.policies = PolicyFollower(settings, codec, PolicyRegistry(shipped, shipped_record))
        self._deciders: dict[str, Decider] = {}  # by policy version, for the versions loaded now
        log.info("tamiyo policies=%d promoted=%s refused=%d scatter=%s timings=%s",
                 len(self.policies.registry.versions), self.policies.registry.promoted,
                 len(self.policies.registry.refused), backend.name, timings)
        self.runs = Runs()
        # Events of runs whose session has not arrived: (first seen, events).
        self.orphans: dict[str, tuple[float, list[Delivered]]] = {}
        self._reload: list[int] | None = None
        self._loading: DecisionLogReader | None = None
        self._held: list[Delivered] = []  # input events that arrived while our decisions were being read
        self._bad_decisions: list[tuple[Message, str]] = []  # to dead-letter in the next transaction
        self._examined: dict[int, int] = {}  # decisions partition -> offset examined (committed) before
        self._examined_now: dict[int, int] = {}  # ... and how far this rebuild examined it, to commit
        self._decided_with: dict[tuple[str, int], int] = {}  # the furthest catalogue our past decisions read
        self._rebuild = False
        self._partitions: list[int] = []  # the run partitions assigned (0: this instance dead-letters policies)
        self._policies_examined = 0  # library.policies' offset below which unusable records were dead-lettered
        self.instance = instance
        self.orphan_timeout_s = orphan_timeout_s
        self.processor = ExactlyOnceProcessor(
            settings, codec, group_id=f"{prefix}tamiyo", transactional_id=f"{prefix}tamiyo-{instance}",
            inputs=self.inputs, handler=self.handle, after_batch=self.after_batch,
            dlq_topic=topic_spec(TopicName.DLQ.value, prefix).name,
            # Reading our past decisions takes steps without polling the group: allow that for long (a hung
            # step is ended by the service loop's watchdog long before).
            consumer_config={"partition.assignment.strategy": "range", "max.poll.interval.ms": 1_800_000},
            on_assign=self._assigned,
        )
        self.decided = 0
        self.duplicates = 0
        self.late = 0  # events of forgotten runs, skipped
        self.past_decisions = 0
        self.load_chunk = DECISIONS_CHUNK  # records of our decisions topic read per step at most
        self.load_steps: list[tuple[int, float]] = []  # the last (re)build's steps: (records, seconds)
        self.latencies_ms: deque[float] = deque(maxlen=10_000)  # the latest decisions' latencies (decide alone)
        # The latest decisions' control loop, stage by stage (ms; see LOOP_STAGES).
        self.loop_stages: deque[dict[str, float]] = deque(maxlen=10_000)
        self._batch_decisions: list[tuple[float, float]] = []  # this batch's: (trigger created at, decide s)
        self._last_report = time.monotonic()

    # -- (re)building -----------------------------------------------------------------------------
    def _assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
        self._reset(sorted({tp.partition for tp in partitions}))

    def _reset(self, partitions: list[int]) -> None:
        """Forget the state of every run: only where the consumer reads the assigned partitions from their
        start (an assignment at OFFSET_BEGINNING, or ``rebuild``), else the events already consumed are lost."""
        self._partitions = partitions
        self.runs = Runs()
        self.orphans.clear()
        self._held.clear()
        self._examined_now = {}
        self._rebuild = False
        if self._loading is not None:
            self._loading.close()
            self._loading = None
        self._reload = partitions
        log.info("tamiyo instance=%s rebuilding partitions=%s", self.instance, partitions)

    def rebuild(self) -> None:
        """Forget everything; read our past decisions and the inputs of the assigned partitions again."""
        self.processor.consumer.rewind_to_beginning()
        self._reset(sorted({tp.partition for tp in self.processor.consumer.assignment()}))

    @property
    def settled(self) -> bool:
        """Not rebuilding: past decisions read, no input event held, no dead letter waiting."""
        return (self._reload is None and self._loading is None and not self._held and not self._bad_decisions
                and not self._examined_now)

    def _start_loading(self) -> None:
        partitions, self._reload = self._reload or [], None
        wanted = [(self.decisions.name, p) for p in partitions]
        ends = self._offsets.end_offsets(wanted) if wanted else {}
        self._examined = examined_offsets(self.settings, self.processor.consumer.group_id, self.decisions.name,
                                          partitions)
        if 0 in partitions:
            self._policies_examined = examined_offsets(self.settings, self.processor.consumer.group_id,
                                                       self.policies.published_topic, [0]).get(0, 0)
        self._bad_decisions.clear()  # not committed: met again below the examined offset, dead-lettered then
        self.past_decisions = 0
        self._decided_with = {}
        self.load_steps = []
        self._loading = DecisionLogReader(self.settings, self.decisions.name,
                                          {p: end for (_, p), end in ends.items()})

    def _load_step(self) -> None:
        """One chunk of our own past decisions on the assigned partitions: what is already decided and commanded."""
        loader = self._loading
        assert loader is not None, "_start_loading() first"
        start = time.perf_counter()
        messages = loader.step(chunk=self.load_chunk)
        for msg in messages:
            parsed = parse_decision(self.codec, self.decisions, msg.value())
            if isinstance(parsed, str):
                topic, partition, offset = position_of(msg)
                if offset >= self._examined.get(partition, 0):
                    self._bad_decisions.append((msg, f"tamiyo: {parsed}"))
                else:  # dead-lettered when it was first examined
                    log.info("tamiyo skipped a record again topic=%s[%d] offset=%d reason=%s", topic, partition,
                             offset, parsed)
                continue
            record(self.runs.get(parsed.run_id), parsed.decision)
            for p in parsed.decision.catalog_positions:
                key = (p.topic, p.partition)
                self._decided_with[key] = max(p.offset, self._decided_with.get(key, 0))
            self.past_decisions += 1
        self.load_steps = self.load_steps[-999:] + [(len(messages), time.perf_counter() - start)]
        if loader.done:
            self._examined_now = {p: end for p, end in loader.ends.items() if end > self._examined.get(p, 0)}
            self._loading = None
            log.info("tamiyo instance=%s loaded %d past decisions", self.instance, self.past_decisions)
            # Decide on with at least the catalogue the past decisions had (a restart's catch-up may stop short).
            # Bounded well below the service loop's stall watchdog: positions no log holds cost this wait only.
            if not self.catalog.reach(self._decided_with, timeout_s=REACH_TIMEOUT_S):
                log.warning("tamiyo instance=%s catalogue behind its past decisions' positions; deciding on with "
                            "what it has (each decision records its own)", self.instance)

    # -- per event ------------------------------------------------------------------------------
    def handle(self, delivered: Delivered) -> Iterator[Output]:
        if self._loading is not None or self._reload is not None:
            self._held.append(delivered)  # decided only once we know what was decided before
            return
        yield from self._handle_held()
        yield from self._handle(delivered)

    def _handle_held(self) -> Iterator[Output]:
        while self._held and self._loading is None and self._reload is None:
            yield from self._handle(self._held.pop(0))

    def _handle(self, delivered: Delivered) -> Iterator[Output]:
        if self._rebuild:
            return  # read again after the rebuild this batch asked for
        message = delivered.message
        topic = delivered.topic[len(self.prefix):]
        if not message.run_id:
            self.processor.consumer.reject(delivered, "tamiyo: event without run_id on a run-scoped topic",
                                           "RejectedEvent")
            return
        ended = self.runs.ended(message.run_id)
        if ended is not None:
            if ended == "failed" and topic == TopicName.TRAINING_SESSIONS.value and \
                    message.payload.session.status.value not in ("completed", "failed"):
                # A failed run resumed after we forgot it: deciding on needs its whole history again.
                log.info("tamiyo instance=%s run_id=%s resumed after it failed; rebuilding", self.instance,
                         message.run_id)
                self._rebuild = True
                return
            self.late += 1
            return
        run = self.runs.get(message.run_id)
        try:
            if not run.admit(message.event_id, content_digest(topic, message.payload)):
                self.duplicates += 1
                return
            fold(run, topic, message.payload)
        except RejectedEvent as exc:
            self.processor.consumer.reject(delivered, f"tamiyo: {exc}", "RejectedEvent")
            return
        if run.session is None:
            self.orphans.setdefault(run.run_id, (time.monotonic(), []))[1].append(delivered)
            return
        held = self.orphans.pop(run.run_id, None)
        if run.refused_before_session:
            self._reject_refused(run, held[1] if held is not None else [])
        yield from self._decide_ready(run, message.event_id, message.timestamp.timestamp())

    def _reject_refused(self, run: RunState, held: list[Delivered]) -> None:
        """Dead-letter the events of slots the session turned out not to have (folded while it was unknown)."""
        refused = set(run.refused_before_session)
        run.refused_before_session.clear()
        for delivered in held:
            kind = _SLOT_EVENT_KINDS.get(delivered.topic[len(self.prefix):])
            payload = delivered.message.payload
            if kind is not None and (kind, payload.layer_id, payload.seed_idx, payload.epoch) in refused:
                self.processor.consumer.reject(
                    delivered, f"tamiyo: run {run.run_id} has no seed slot {payload.layer_id}:{payload.seed_idx}",
                    "RejectedEvent")

    def _decide_ready(self, run: RunState, trace_id: str, created_at: float) -> Iterator[Output]:
        """Decide the run's complete epochs; ``created_at``: when the event that completed them was made."""
        for epoch in run.ready_epochs():
            start = time.perf_counter()
            actions = self._decide(run, epoch)
            took = time.perf_counter() - start
            self.latencies_ms.append(took * 1000)
            self._batch_decisions.append((created_at, took))
            for action in actions:
                record(run, action.decision)
                yield from self._outputs(run.run_id, action, trace_id)
            self.decided += 1
        self.runs.forget_if_done(run)  # nothing left to decide for it

    def _decide(self, run: RunState, epoch: int) -> list[Action]:
        """The epoch decided by the run's policy version; a ``no_op`` saying why when that version cannot decide
        (not published, or refused): the run trains on unadapted, and a version published later decides its
        next epochs."""
        registry = self.policies.registry
        version = run.policy_version or registry.promoted
        name = None
        if run.controller != "policy":  # the heuristic or random germinations (the promoted policy is only held)
            version, name = registry.promoted, run.controller
        if registry.why_not(version) is not None:
            self.policies.refresh()  # it may have been published a moment ago
        try:
            decider = self.decider_for(version, name)
        except PolicyError as exc:
            log.warning("tamiyo run_id=%s epoch=%d not decided by a policy: %s", run.run_id, epoch, exc)
            return [idle_action(run.run_id, epoch, version, f"no action: {exc}")]
        return decider.decide(run, epoch)

    def decider_for(self, version: str, name: str | None = None) -> Decider:
        """The decider of a policy version (PolicyError when the registry cannot load it); ``name``: what its
        decisions record as their policy version (the heuristic and random controllers' name, not a version)."""
        name = name or version
        decider = self._deciders.get(name)
        policy = self.policies.registry.policy(version)
        if decider is None or decider.policy is not policy:
            policy.scatter = self.scatter
            decider = self._deciders[name] = Decider(policy, name, self.chooser)
            while len(self._deciders) > POLICIES_KEPT_LOADED:
                self._deciders.pop(next(iter(self._deciders)))
        return decider

    def _outputs(self, run_id: str, action: Action, trace_id: str) -> Iterator[Output]:
        decision: AdaptationDecision = action.decision
        log.info("decision run_id=%s epoch=%d type=%s action=%s layer=%s seed=%s kernel=%s reason=%s", run_id,
                 decision.epoch, decision.adaptation_type.value, decision.action.value if decision.action else "-",
                 decision.layer_name, decision.seed_idx, decision.kernel_id,
                 decision.reason)
        yield self.decisions, self._envelope(self.decisions, run_id, decision.decision_id, trace_id, decision)
        if action.command is not None:
            yield self.commands, self._envelope(self.commands, run_id, action.command.command_id, trace_id,
                                                action.command)

    def _envelope(self, spec: TopicSpec, run_id: str, event_id: str, trace_id: str, payload) -> OonaMessage:
        return spec.message_type(event_id=event_id, sender_id=f"tamiyo-{self.instance}", topic=spec.name,
                                 run_id=run_id, trace_id=trace_id, payload=payload)

    def after_batch(self, batch: list[Delivered]) -> Iterator[Output]:
        """Dead letters of our decisions topic; events held while loading. When caught up (an empty
        batch): events of runs that announced no session within ``orphan_timeout_s`` are dead-lettered,
        failed runs forgotten."""
        self.catalog.refresh()
        self.policies.refresh()
        if self._loading is None and self._reload is None:
            bad, self._bad_decisions = self._bad_decisions, []
            for msg, reason in bad:
                self.processor.consumer.reject_raw(msg, reason, "UndecodableDecision")
            if self._examined_now:  # committed with those dead letters, or neither is
                examined, self._examined_now = self._examined_now, {}
                self.processor.producer.send_offsets_to_transaction(
                    [TopicPartition(self.decisions.name, p, end) for p, end in examined.items()],
                    self.processor.consumer.group_metadata(), TXN_CALL_TIMEOUT_S)
            self._dead_letter_policies()
        yield from self._handle_held()
        if batch or self._loading is not None or self._reload is not None or self._held:
            return
        for run_id, (since, events) in list(self.orphans.items()):
            if time.monotonic() - since < self.orphan_timeout_s:
                continue
            for delivered in events:
                self.processor.consumer.reject(delivered, f"tamiyo: unknown run {run_id} (no training.sessions "
                                                          "event)", "UnknownRun")
            self.runs.forget(run_id)
            del self.orphans[run_id]
        for run_id in self.runs.forget_failed():
            log.info("tamiyo instance=%s forgot failed run_id=%s", self.instance, run_id)

    def _dead_letter_policies(self) -> None:
        """The ``library.policies`` records refused since the last batch, dead-lettered once for the group: by
        the instance holding run partition 0, with the offset it examined up to committed in the same transaction
        (a restarted or newly assigned holder starts from that offset, as for our own decisions topic)."""
        if 0 not in self._partitions:
            return  # another instance of the group dead-letters them
        for offset, msg, reason, kind in self.policies.unusable:
            if offset >= self._policies_examined:
                self.processor.consumer.reject_raw(msg, f"tamiyo: {reason}", kind)
        if self.policies.read_to > self._policies_examined:
            self._policies_examined = self.policies.read_to
            self.processor.producer.send_offsets_to_transaction(
                [TopicPartition(self.policies.published_topic, 0, self._policies_examined)],
                self.processor.consumer.group_metadata(), TXN_CALL_TIMEOUT_S)

    # -- the loop ----------------------------------------------------------------------------------
    def step(self) -> int:
        if self._reload is not None or self._loading is not None:
            try:
                with clients.map_exceptions():  # a bus error is an EsperError (KafkaClientError) from here on
                    if self._reload is not None:
                        self._start_loading()
                    self._load_step()
            except EsperError as exc:
                if _fatal(exc):
                    raise FatalError(f"tamiyo instance {self.instance} cannot continue: {exc}") from None
                log.warning("tamiyo instance=%s reading past decisions failed (%s); starting over", self.instance, exc)
                # From the start of the log, as a fresh start: the input events held meanwhile are dropped with
                # the state, so they must be read again (the consumer is past them).
                self.rebuild()
            if self._loading is not None:
                return 0  # one chunk per step: the loop (and its watchdog) sees progress
        try:
            # gather: an epoch's telemetry and its EpochCompleted usually arrive within a few ms of
            # each other; one transaction for both saves a commit round trip on the control loop.
            with clients.map_exceptions():
                handled = self.processor.process_batch(max_messages=500, timeout_s=0.2)
        except EsperError as exc:
            self._batch_decisions.clear()
            # Fenced by a newer instance with our transactional id: stop, be restarted. Any other error of
            # the producer, fatal ones too, the processor has recovered from (aborted, or a new producer).
            if isinstance(exc, FatalError) or clients.is_fenced(exc):
                raise FatalError(f"tamiyo instance {self.instance} cannot continue: {exc}") from None
            # The transaction was aborted and the offsets rewound; our in-memory state may hold the
            # aborted batch, so rebuild everything from the log.
            log.warning("tamiyo instance=%s batch failed (%s); rebuilding", self.instance, exc)
            self.rebuild()
            return 0
        self._record_loop()
        if self._rebuild:  # a forgotten run came back: rebuild from the log (what the batch committed stands)
            self.rebuild()
        if time.monotonic() - self._last_report > 30:
            self._report()
        return handled

    def _record_loop(self) -> None:
        """The stages of the batch's decisions: from the completing event's creation to their commit."""
        decisions, self._batch_decisions = self._batch_decisions, []
        times = self.processor.times
        if not decisions or not times.committed:
            return
        fold_s = max(0.0, times.handle_s - sum(took for _, took in decisions))
        for created_at, took in decisions:
            self.loop_stages.append({
                "wait": (times.consumed_at - created_at) * 1000, "fold": fold_s * 1000, "decide": took * 1000,
                "after_batch": times.after_batch_s * 1000, "produce": times.produce_s * 1000,
                "send_offsets": times.send_offsets_s * 1000,
                "commit": times.commit_s * 1000, "total": (times.committed_at - created_at) * 1000,
                "batch_records": times.records, "batch_decisions": len(decisions),
            })

    def loop_breakdown(self) -> dict[str, dict[str, float]]:
        """p50 / p95 / p99 of each stage of the latest decisions' control loop (ms, or counts per batch)."""
        breakdown = {}
        for stage in LOOP_STAGES:
            values = sorted(s[stage] for s in self.loop_stages)
            if values:
                breakdown[stage] = {f"p{q}": round(values[min(len(values) - 1, len(values) * q // 100)], 3)
                                    for q in (50, 95, 99)}
        return breakdown

    def stats(self) -> dict[str, int | float]:
        lat = sorted(self.latencies_ms)
        return {
            "runs": len(self.runs.runs), "finished_runs": len(self.runs.finished), "epochs_decided": self.decided,
            "duplicates_skipped": self.duplicates, "late_skipped": self.late,
            "dead_lettered": self.processor.consumer.dead_lettered,
            "decision_ms_p50": statistics.median(lat) if lat else 0.0,
            "decision_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
            **{f"loop_ms_{q}": v for q, v in self.loop_breakdown().get("total", {}).items()},
        }

    def lag(self) -> int:
        positions = [tp for tp in self.processor.consumer.positions() if tp.offset >= 0]
        ends = self._offsets.end_offsets([(tp.topic, tp.partition) for tp in positions])
        return sum(max(0, ends[(tp.topic, tp.partition)] - tp.offset) for tp in positions)

    def _report(self) -> None:
        self._last_report = time.monotonic()
        try:
            with clients.map_exceptions():
                lag = self.lag()
        except KafkaClientError:
            lag = -1
        stats = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.stats().items())
        log.info("tamiyo health instance=%s lag=%d %s", self.instance, lag, stats)

    def close(self) -> None:
        self.processor.close()
        self.catalog.close()
        self.policies.close()
