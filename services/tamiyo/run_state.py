"""What Tamiyo knows about each run, rebuilt from the log: pure, no Kafka, no torch (numpy arrays).

Events are folded in arrival order. A run's events of one kind arrive in the order Tolaria
produced them (one key, one partition), but the kinds arrive interleaved in any order. So
Tamiyo decides on epoch ``e`` only when the epoch is *complete*: its EpochCompleted is here
and, for every kind, at least as many events as the run declared up to ``e`` (cumulative
counts in EpochCompleted) have arrived. Decisions then only look at events of epochs <= ``e``,
which makes them a function of the log alone: a replay decides exactly the same. (Field reports
are waited for but not read by the decisions; ``esper policy train`` reads them as rewards.)

Event ids: an event whose id was seen before in the run is an exact duplicate (same topic and
payload: skipped) or a conflict (other content: dead-lettered as one). The ids are remembered
per run in a window of the latest ``EVENT_WINDOW``, so memory stays bounded however long a run
is; a duplicate older than that is folded again and meets the fold's own checks (a second
health signal or EpochCompleted for one epoch is rejected).

Health signals are kept as arrays (``health_table``: one block per epoch, one row per seed slot), so
that the features of every seed are read at once at decision time, without a loop over seeds. A batch of
signals (``apply_health_batch``: an epoch's telemetry, a recorded run's) is folded as array work: its
fields gathered into arrays once, its slots looked up in a sorted key array of the session's slots, its
rows written into the table per epoch; the same state and the same refusals as ``apply_health`` one by one.

Memory: a run is forgotten once it is done (completed and every epoch decided) or failed and
nothing is left to read (``Runs.forget_failed``); its id stays in a bounded set of finished
runs, so that late events of it are skipped instead of waiting for a session that came long ago.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import BaseModel

from contracts import (
    CommandAction,
    EpochCompleted,
    FieldReport,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    SeedState,
    SeedTransition,
    TrainingSession,
    TrainingSessionEvent,
)
from services.core.errors import EsperError
from services.tamiyo.health_table import HEALTH_FIELDS, HealthTable
from services.tamiyo.seed_states import SeedStates

# What a batch of health signals is gathered by: the slot and epoch (int64) and the values (float64), each read
# from the signal's __dict__ by one C-level getter.
_SLOT_AND_EPOCH = (itemgetter("layer_id"), itemgetter("seed_idx"), itemgetter("epoch"))
_HEALTH_VALUES = itemgetter(*HEALTH_FIELDS)
_KEY_BITS = 32  # a slot's key for the batch lookup: layer_id << 32 | seed_idx (``_fits_key``: both < 2**31)

EVENT_WINDOW = 20_000  # event ids remembered per run for duplicate detection (about 2 MB at most)
FINISHED_WINDOW = 100_000  # ids of forgotten runs remembered (late events of them are skipped)


def _fits_key(*ids: int) -> bool:
    """Whether slot ids fit the batch lookup's key: each within an Avro int's non-negative range."""
    return all(0 <= i < 1 << 31 for i in ids)


class RejectedEvent(EsperError, ValueError):
    """A well-formed event Tamiyo cannot use (unknown seed slot, conflicting duplicate); goes to the DLQ."""


def content_digest(topic: str, payload: BaseModel) -> bytes:
    """What makes two events with one id the same event: their topic and payload (the envelope's
    timestamp, sender and trace are how it was sent, not what it says)."""
    return hashlib.blake2b(f"{topic}\n{payload.model_dump_json()}".encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Issued:
    """A command Tamiyo issued (rebuilt from its decisions on restart)."""

    command_id: str
    action: CommandAction
    layer_id: int
    seed_idx: int
    epoch: int  # the epoch whose completion it answered
    kernel_id: str | None = None  # the kernel a germination loads


@dataclass
class RunState:
    run_id: str
    session: TrainingSession | None = None
    epochs: dict[int, EpochCompleted] = field(default_factory=dict)
    # Health signals by epoch and slot row; a slot gets its row when first seen (signal or session).
    health: HealthTable = field(default_factory=HealthTable, compare=False, repr=False)
    slot_rows: dict[tuple[int, int], int] = field(default_factory=dict)
    # The rows of the session's slots alone (empty before the session): the fold's one lookup per signal.
    session_rows: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)
    transitions: list[SeedTransition] = field(default_factory=list)
    # What the transitions say at the latest epoch decided, moved forward per decision (no scan of them all).
    transitions_view: SeedStates = field(default_factory=SeedStates, compare=False, repr=False)
    reports: list[FieldReport] = field(default_factory=list)
    health_per_epoch: Counter = field(default_factory=Counter)
    transitions_per_epoch: Counter = field(default_factory=Counter)
    slots: frozenset[tuple[int, int]] = frozenset()
    # A fork (``esper run --fork``) starts after its parent's epoch K: its first epoch is K + 1, and its seeds
    # are where the parent left them (its first session's seed states, entered "at" K: the parent's log,
    # not the fork's, holds when). A run that is no fork starts at 0 with every seed dormant.
    first_epoch: int = 0
    fork_states: dict[tuple[int, int], tuple[SeedState, int]] = field(default_factory=dict)
    # The policy version that decides the run: the one its session names, else the one that made its first
    # decision (``decider.record``), so that a promotion does not change the policy of a run in progress.
    policy_version: str | None = None
    # How its germinations are chosen (``controllers``): its session's controller and exploration rate.
    controller: str = "policy"
    exploration: float = 0.0
    # Tamiyo's own side: epochs decided and the commands it issued.
    decided: set[int] = field(default_factory=set)
    issued: list[Issued] = field(default_factory=list)
    finished: bool = False
    # The latest event ids of the run and their content digests, oldest first.
    event_ids: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    # Health signals and transitions folded before the session named the run's slots: checked when it arrives.
    unchecked: list[HealthSignal | SeedTransition] = field(default_factory=list, repr=False)
    # What that check refused, as (kind "health" | "transition", layer_id, seed_idx, epoch): not counted
    # towards any epoch's completeness; the service dead-letters their records.
    refused_before_session: list[tuple[str, int, int, int]] = field(default_factory=list)
    # Views derived from the session alone (topology, rows of its slots), built once by the modules that read
    # them (``features``) and dropped when the session changes.
    views: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- event identity ----------------------------------------------------------------------------
    def admit(self, event_id: str, digest: bytes, window: int = EVENT_WINDOW) -> bool:
        """True for an event to fold, False for an exact duplicate of one seen before; RejectedEvent when
        the id was seen with other content (the first one stands)."""
        seen = self.event_ids.get(event_id)
        if seen is not None:
            if seen != digest:
                raise RejectedEvent(f"event id conflict: {event_id} was seen before in run {self.run_id} "
                                    "with other content")
            return False
        self.event_ids[event_id] = digest
        if len(self.event_ids) > window:
            self.event_ids.popitem(last=False)
        return True

    @property
    def failed(self) -> bool:
        return self.finished and self.session is not None and self.session.status.value == "failed"

    # -- folding events ------------------------------------------------------------------------
    def apply_session(self, event: TrainingSessionEvent) -> None:
        if self.session is None and event.fork_epoch is not None:
            self.first_epoch = event.fork_epoch + 1
            self.fork_states = {(s.layer_id, s.seed_idx): (s.state, event.fork_epoch)
                                for s in event.session.seeds if s.state is not SeedState.DORMANT}
        if event.policy_version:
            self.policy_version = event.policy_version
        self.controller, self.exploration = event.controller or "policy", event.exploration
        if self.session is None or event.session.status.value in ("completed", "failed"):
            self.session = event.session
            self.slots = frozenset((s.layer_id, s.seed_idx) for s in event.session.seeds)
            self.session_rows = {slot: self.slot_rows.setdefault(slot, len(self.slot_rows)) for slot in
                                 ((s.layer_id, s.seed_idx) for s in event.session.seeds)}
            self.views.clear()
            self._check_unchecked()
        self.finished = event.session.status.value in ("completed", "failed")

    def _check_unchecked(self) -> None:
        """Events of slots the session does not have, folded before it arrived, stop counting (an epoch must
        not look complete because of them) and are reported in ``refused_before_session``."""
        unchecked, self.unchecked = self.unchecked, []
        for event in unchecked:
            if (event.layer_id, event.seed_idx) in self.slots:
                continue
            if isinstance(event, HealthSignal):
                self.health_per_epoch[event.epoch] -= 1  # its row stays in the table, never read: no session slot
                kind = "health"
            else:
                self.transitions.remove(event)
                self.transitions_view.reset()  # its positions in the list moved
                self.transitions_per_epoch[event.epoch] -= 1
                kind = "transition"
            self.refused_before_session.append((kind, event.layer_id, event.seed_idx, event.epoch))

    def apply_health(self, signal: HealthSignal) -> None:
        # The hot path of the fold (one call per seed per epoch): dict work only, no per-event numpy (a row
        # write costs more than the whole of this). A slot of the session finds its row in one lookup.
        # Fields read from the model's __dict__: a quarter of an attribute read's cost on a pydantic model here.
        fields = signal.__dict__
        slot = (fields["layer_id"], fields["seed_idx"])
        row = self.session_rows.get(slot)
        if row is None:
            self._apply_health_off_session(slot, signal)
            return
        epoch = fields["epoch"]
        if not self.health.add(row, epoch, signal):
            raise RejectedEvent(f"second health signal for seed {slot[0]}:{slot[1]} epoch {epoch}")
        self.health_per_epoch[epoch] += 1

    def apply_health_batch(self, signals: Sequence[HealthSignal]) -> list[tuple[int, RejectedEvent]]:
        """``apply_health`` of each signal in order, as array work once the session is known: the same state.
        Returns the signals refused, as (position in ``signals``, why); those changed nothing. The signals are
        as the contract validates them (integer ids; any number, finite or not, in the health fields)."""
        n = len(signals)
        if self.session is None or n == 0:
            return self._apply_health_each(signals)  # before the session every signal is checked when it comes
        fields = [signal.__dict__ for signal in signals]
        try:
            layer, seed, epoch = (np.fromiter(map(get, fields), dtype=np.int64, count=n) for get in _SLOT_AND_EPOCH)
        except OverflowError:  # beyond int64: no Avro record, only a hand-made signal; the one-by-one path
            return self._apply_health_each(signals)
        session_keys = self._session_keys()
        either = layer | seed  # negative if either is, below 2**31 if both are (non-negative)
        if session_keys is None or not _fits_key(int(either.min()), int(either.max())):
            return self._apply_health_each(signals)  # ids beyond an Avro int: not from the bus, one by one
        keys, slot_rows = session_keys
        wanted = (layer << _KEY_BITS) | seed
        at = np.searchsorted(keys, wanted)  # keys end with a sentinel above every key: ``at`` is inside
        known = keys[at] == wanted
        values = np.fromiter(chain.from_iterable(map(_HEALTH_VALUES, fields)), dtype=np.float64,
                             count=n * len(HEALTH_FIELDS)).reshape(n, len(HEALTH_FIELDS))
        if known.all():  # the usual case: no copy of the batch
            taken = self.health.add_many(slot_rows[at], epoch, values)
        else:
            taken = np.zeros(n, dtype=bool)
            taken[known] = self.health.add_many(slot_rows[at[known]], epoch[known], values[known])
        folded = int(taken.sum())
        if folded and int(epoch.min()) == int(epoch.max()):  # one epoch's telemetry
            self.health_per_epoch[int(epoch[0])] += folded
        elif folded:
            for e, count in zip(*np.unique(epoch[taken], return_counts=True), strict=True):
                self.health_per_epoch[int(e)] += int(count)
        if folded == n:
            return []
        refused = []
        for i in np.flatnonzero(~taken).tolist():  # Python only for the refused ones
            slot = (int(layer[i]), int(seed[i]))
            refused.append((i, RejectedEvent(
                f"second health signal for seed {slot[0]}:{slot[1]} epoch {int(epoch[i])}" if known[i]
                else f"run {self.run_id} has no seed slot {slot[0]}:{slot[1]}")))
        return refused

    def _apply_health_each(self, signals: Sequence[HealthSignal]) -> list[tuple[int, RejectedEvent]]:
        refused = []
        for i, signal in enumerate(signals):
            try:
                self.apply_health(signal)
            except RejectedEvent as exc:
                refused.append((i, exc))
        return refused

    def _session_keys(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The session's slots as sorted keys (``layer_id << 32 | seed_idx``), then a sentinel above any key, and
        their table rows (-1 for the sentinel), built once per session (int64 both); None when a slot's ids do
        not fit a key."""
        if "health_keys" not in self.views:
            slots = sorted((((layer_id << _KEY_BITS) | seed_idx), row)
                           for (layer_id, seed_idx), row in self.session_rows.items())
            slots.append((np.iinfo(np.int64).max, -1))
            fits = all(_fits_key(*slot) for slot in self.session_rows)
            self.views["health_keys"] = (np.array([key for key, _ in slots], dtype=np.int64),
                                         np.array([row for _, row in slots], dtype=np.int64)) if fits else None
        return self.views["health_keys"]

    def _apply_health_off_session(self, slot: tuple[int, int], signal: HealthSignal) -> None:
        """A signal before the session arrived (checked then), or of a slot the session does not have."""
        self._check_slot(*slot)
        row = self.slot_rows.get(slot)
        if row is None:
            row = self.slot_rows[slot] = len(self.slot_rows)
        if not self.health.add(row, signal.epoch, signal):
            raise RejectedEvent(f"second health signal for seed {slot[0]}:{slot[1]} epoch {signal.epoch}")
        self.health_per_epoch[signal.epoch] += 1
        self.unchecked.append(signal)

    def apply_epoch(self, event: EpochCompleted) -> None:
        epoch = event.state.epoch
        if epoch in self.epochs:
            raise RejectedEvent(f"second EpochCompleted for epoch {epoch}")
        self.epochs[epoch] = event

    def apply_transition(self, transition: SeedTransition) -> None:
        self._check_slot(transition.layer_id, transition.seed_idx)
        self.transitions.append(transition)
        self.transitions_per_epoch[transition.epoch] += 1
        if self.session is None:
            self.unchecked.append(transition)

    def apply_report(self, report: FieldReport) -> None:
        self.reports.append(report)

    def _check_slot(self, layer_id: int, seed_idx: int) -> None:
        if self.session is None:
            return  # checked when the session arrives (``_check_unchecked``)
        if (layer_id, seed_idx) not in self.slots:
            raise RejectedEvent(f"run {self.run_id} has no seed slot {layer_id}:{seed_idx}")

    # -- completeness ---------------------------------------------------------------------------
    def _declared(self, epoch: int, attribute: str) -> int:
        return sum(getattr(e, attribute) for k, e in self.epochs.items() if k <= epoch)

    def complete(self, epoch: int) -> bool:
        if self.session is None or epoch not in self.epochs:
            return False
        if any(k not in self.epochs for k in range(self.first_epoch, epoch)):
            return False  # an earlier epoch is still missing
        seen = lambda counter: sum(n for k, n in counter.items() if k <= epoch)  # noqa: E731
        return (seen(self.health_per_epoch) >= self._declared(epoch, "health_signals")
                and seen(self.transitions_per_epoch) >= self._declared(epoch, "seed_transitions")
                and len(self.reports) >= self._declared(epoch, "field_reports"))

    def ready_epochs(self) -> list[int]:
        """Complete epochs not decided yet, oldest first: ``complete(e)`` for every epoch, in one pass.

        Asked after every folded event, so it keeps running sums instead of re-summing every epoch's
        declared and seen counts (which made a long log's first start grow faster than linearly).
        """
        if self.session is None:
            return []
        health, transitions = sorted(self.health_per_epoch.items()), sorted(self.transitions_per_epoch.items())
        at_health = at_transitions = 0
        seen_health = seen_transitions = declared_health = declared_transitions = declared_reports = 0
        ready = []
        for position, epoch in enumerate(sorted(self.epochs), start=self.first_epoch):
            if epoch != position:
                break  # an earlier epoch is still missing: this one and every later one wait
            event = self.epochs[epoch]
            declared_health += event.health_signals
            declared_transitions += event.seed_transitions
            declared_reports += event.field_reports
            while at_health < len(health) and health[at_health][0] <= epoch:
                seen_health += health[at_health][1]
                at_health += 1
            while at_transitions < len(transitions) and transitions[at_transitions][0] <= epoch:
                seen_transitions += transitions[at_transitions][1]
                at_transitions += 1
            if (epoch not in self.decided and seen_health >= declared_health
                    and seen_transitions >= declared_transitions and len(self.reports) >= declared_reports):
                ready.append(epoch)
        return ready

    # -- the view at one epoch --------------------------------------------------------------------
    def layers(self) -> list[LayerSpec]:
        assert self.session is not None  # the view is asked of runs that have a session
        model = self.session.training_model_config
        if model.layers:
            return list(model.layers)
        # A session logged before layers were declared: derive them from the seeds.
        seen: dict[int, LayerSpec] = {}
        for seed in self.session.seeds:
            seen.setdefault(seed.layer_id, LayerSpec(name=seed.layer_name or str(seed.layer_id),
                                                     layer_id=seed.layer_id, kind="linear"))
        return list(seen.values())

    def topology(self) -> list[LayerEdge]:
        assert self.session is not None
        model = self.session.training_model_config
        if model.topology:
            return list(model.topology)
        layers = self.layers()
        return [LayerEdge(source=a.name, target=b.name) for a, b in pairwise(layers)]

    def seeds(self) -> list[tuple[int, int, str]]:
        """(layer_id, seed_idx, layer_name) of every slot, in session order."""
        assert self.session is not None
        return [(s.layer_id, s.seed_idx, s.layer_name) for s in self.session.seeds]

    def seed_states(self, epoch: int) -> dict[tuple[int, int], tuple[SeedState, int]]:
        """State of every seed that ever moved, after the boundary of ``epoch``, and the epoch it entered it
        (seeds not in the result are DORMANT)."""
        return {**self.fork_states, **self.transitions_view.at(self.transitions, epoch).states}

    def seed_rows(self) -> np.ndarray:
        """The health-table row of every slot, in session order (int64, built once per session)."""
        rows = self.views.get("seed_rows")
        if rows is None:
            assert self.session is not None, "seed rows exist once the session is known"
            seeds = self.session.seeds
            rows = self.views["seed_rows"] = np.fromiter(
                (self.slot_rows.setdefault((s.layer_id, s.seed_idx), len(self.slot_rows)) for s in seeds),
                dtype=np.int64, count=len(seeds))
        return rows

    def epochs_until(self, epoch: int) -> list[EpochCompleted]:
        return [self.epochs[k] for k in sorted(self.epochs) if k <= epoch]

    def germinations(self, epoch: int) -> list[int]:
        """Epochs of germinations that happened (<= epoch) or are still pending from our commands."""
        happened = self.transitions_view.at(self.transitions, epoch).germinated
        # A fork's seeds that grew in its parent were germinated there, at or before the fork point (the
        # parent's seeds culled back to dormant are not in its session: Tolaria's own budget still holds).
        happened = happened + [entered for _, entered in self.fork_states.values()]
        return sorted(happened + [i.epoch + 1 for i in self.pending(epoch) if i.action is CommandAction.GERMINATE])

    def pending(self, epoch: int, expire_after: int = 2) -> list[Issued]:
        """Our commands not yet seen taking effect; after ``expire_after`` epochs they count as lost
        (Tolaria rejected them to the DLQ, or the run moved on)."""
        applied = self.transitions_view.at(self.transitions, epoch).applied
        return [i for i in self.issued if i.command_id not in applied and epoch - i.epoch < expire_after]


class Runs:
    """Every run seen on the assigned partitions, and the latest runs forgotten."""

    def __init__(self, finished_window: int = FINISHED_WINDOW) -> None:
        self.runs: dict[str, RunState] = {}
        # Forgotten runs: run id -> how it ended ("completed", "failed"), oldest first.
        self.finished: OrderedDict[str, str] = OrderedDict()
        self.finished_window = finished_window

    def ended(self, run_id: str) -> str | None:
        """How a forgotten run ended ("completed" or "failed"); None for a run not forgotten."""
        return self.finished.get(run_id)

    def get(self, run_id: str) -> RunState:
        state = self.runs.get(run_id)
        if state is None:
            state = self.runs[run_id] = RunState(run_id)
        return state

    def forget(self, run_id: str, ended: str | None = None) -> None:
        """Drop the run's state; ``ended`` remembers that it finished, so its late events are skipped."""
        self.runs.pop(run_id, None)
        if ended is not None:
            self.finished[run_id] = ended
            self.finished.move_to_end(run_id)
            if len(self.finished) > self.finished_window:
                self.finished.popitem(last=False)

    def revive(self, run_id: str) -> None:
        """A forgotten run goes on (a failed run resumed): it is no longer finished."""
        self.finished.pop(run_id, None)

    def forget_if_done(self, run: RunState) -> bool:
        """Forget a run that completed and whose every epoch is decided; returns whether it did."""
        if (run.session is None or run.session.status.value != "completed"
                or not run.decided >= set(range(run.session.training_config.epochs))):
            return False
        self.forget(run.run_id, "completed")
        return True

    def forget_failed(self) -> list[str]:
        """Forget every run whose latest session says it failed and that has no epoch left to decide
        (call when caught up with the log: what it published before failing has been read)."""
        gone = [run.run_id for run in self.runs.values() if run.failed and not run.ready_epochs()]
        for run_id in gone:
            self.forget(run_id, "failed")
        return gone
