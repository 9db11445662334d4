"""The fold of health signals and seed transitions as ``RunState`` did it before it kept running views:
every health signal checked against the session's slot set, and every question about seed states,
germinations and pending commands answered by a scan of all transitions. Kept as the oracle of the
differential tests (tests/unit/test_tamiyo_incremental_fold.py), not used by the service."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from contracts import CommandAction, HealthSignal, SeedState, SeedTransition, TrainingSessionEvent
from services.tamiyo.health_table import HealthTable
from services.tamiyo.run_state import Issued, RejectedEvent


@dataclass
class OracleRun:
    run_id: str = "oracle"
    session: object | None = None
    slots: frozenset[tuple[int, int]] = frozenset()
    health: HealthTable = field(default_factory=HealthTable)
    slot_rows: dict[tuple[int, int], int] = field(default_factory=dict)
    transitions: list[SeedTransition] = field(default_factory=list)
    health_per_epoch: Counter = field(default_factory=Counter)
    transitions_per_epoch: Counter = field(default_factory=Counter)
    unchecked: list[HealthSignal | SeedTransition] = field(default_factory=list)
    refused_before_session: list[tuple[str, int, int, int]] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)

    def apply_session(self, event: TrainingSessionEvent) -> None:
        if self.session is None or event.session.status.value in ("completed", "failed"):
            self.session = event.session
            self.slots = frozenset((s.layer_id, s.seed_idx) for s in event.session.seeds)
            self._check_unchecked()

    def _check_unchecked(self) -> None:
        unchecked, self.unchecked = self.unchecked, []
        for event in unchecked:
            if (event.layer_id, event.seed_idx) in self.slots:
                continue
            if isinstance(event, HealthSignal):
                self.health_per_epoch[event.epoch] -= 1
                kind = "health"
            else:
                self.transitions.remove(event)
                self.transitions_per_epoch[event.epoch] -= 1
                kind = "transition"
            self.refused_before_session.append((kind, event.layer_id, event.seed_idx, event.epoch))

    def apply_health(self, signal: HealthSignal) -> None:
        slot = (signal.layer_id, signal.seed_idx)
        if self.session is not None and slot not in self.slots:
            self._check_slot(*slot)
        row = self.slot_rows.get(slot)
        if row is None:
            row = self.slot_rows[slot] = len(self.slot_rows)
        if not self.health.add(row, signal.epoch, signal):
            raise RejectedEvent(
                f"second health signal for seed {signal.layer_id}:{signal.seed_idx} epoch {signal.epoch}"
            )
        self.health_per_epoch[signal.epoch] += 1
        if self.session is None:
            self.unchecked.append(signal)

    def apply_transition(self, transition: SeedTransition) -> None:
        self._check_slot(transition.layer_id, transition.seed_idx)
        self.transitions.append(transition)
        self.transitions_per_epoch[transition.epoch] += 1
        if self.session is None:
            self.unchecked.append(transition)

    def _check_slot(self, layer_id: int, seed_idx: int) -> None:
        if self.session is None:
            return
        if (layer_id, seed_idx) not in self.slots:
            raise RejectedEvent(f"run {self.run_id} has no seed slot {layer_id}:{seed_idx}")

    def seed_states(self, epoch: int) -> dict[tuple[int, int], tuple[SeedState, int]]:
        states: dict[tuple[int, int], tuple[SeedState, int]] = {}
        for t in self.transitions:
            if t.epoch <= epoch:
                states[(t.layer_id, t.seed_idx)] = (t.to_state, t.epoch)
        return states

    def germinations(self, epoch: int) -> list[int]:
        happened = [t.epoch for t in self.transitions if t.epoch <= epoch and t.to_state is SeedState.GERMINATED]
        return sorted(happened + [i.epoch + 1 for i in self.pending(epoch) if i.action is CommandAction.GERMINATE])

    def pending(self, epoch: int, expire_after: int = 2) -> list[Issued]:
        applied = {t.command_id for t in self.transitions if t.epoch <= epoch and t.command_id}
        return [i for i in self.issued if i.command_id not in applied and epoch - i.epoch < expire_after]
