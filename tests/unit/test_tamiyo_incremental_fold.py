"""The fold's fast paths against the per-event implementation they replace (tests/tamiyo_fold_oracle.py):
random event sequences (health signals and transitions of known and unknown slots, before and after the
session, duplicates of staged and of already written signals, epochs in any order, a second session with
other slots, questions at growing and at earlier epochs) must give the same rejections, the same counts,
the same health table and the same seed states, germinations and pending commands at every step."""

from __future__ import annotations

import random

import numpy as np
import pytest

from contracts import CommandAction, Seed, SeedState, SessionStatus
from services.tamiyo.run_state import Issued, RejectedEvent, RunState
from tests.tamiyo_events import LAYERS, health, session, transition
from tests.tamiyo_fold_oracle import OracleRun

SLOTS = [(11, 0), (11, 1), (22, 0), (22, 1), (99, 0), (98, 1)]  # the last two are no slot of the default session
COMMANDS = [None, None, "c-0", "c-1", "c-2", "c-3"]


def _outcome(apply, event) -> str | None:
    try:
        apply(event)
    except RejectedEvent as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _latest_by_slot(run, epoch: int) -> dict[tuple[int, int], tuple]:
    """Every slot's last three signals of epochs <= ``epoch``, by slot (the two number their rows differently:
    the fast path gives the session's slots a row when the session arrives); slots with none left out."""
    slots = sorted(run.slot_rows)
    rows = np.array([run.slot_rows[s] for s in slots], dtype=np.int64)
    values, epochs, count = run.health.latest(rows, epoch)
    return {s: (values[i].tolist(), epochs[i].tolist(), int(count[i])) for i, s in enumerate(slots) if count[i]}


def _events(rng: random.Random, length: int) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = []
    session_at = rng.randrange(length)
    epoch = 0
    for i in range(length):
        if i == session_at:
            events.append(("session", session()))
        roll = rng.random()
        epoch = max(0, epoch + rng.choice((-1, 0, 0, 0, 1, 1)))
        at = max(0, epoch + rng.choice((-2, -1, 0, 0, 0, 1)))  # events of other epochs than the latest asked
        slot = rng.choice(SLOTS)
        if roll < 0.45:
            events.append(("health", health(at, *slot, score=rng.random(), dead=rng.random(),
                                            ready=rng.random() < 0.3)))
            if rng.random() < 0.15:
                events.append(events[-1])  # an exact second signal for the slot and epoch
        elif roll < 0.7:
            states = list(SeedState)
            events.append(("transition", transition(at, *slot, rng.choice(states), rng.choice(states),
                                                    rng.choice(COMMANDS))))
        elif roll < 0.78:
            events.append(("issue", Issued(f"c-{rng.randrange(4)}", rng.choice(list(CommandAction)), slot[0],
                                           slot[1], at)))
        elif roll < 0.8:
            seeds = [Seed(layer_id=layer.layer_id, seed_idx=k, layer_name=layer.name) for layer in LAYERS
                     for k in (0, 1) if rng.random() < 0.7]
            events.append(("session", session(status=rng.choice([SessionStatus.COMPLETED, SessionStatus.FAILED]),
                                              seeds=seeds)))
        else:
            events.append(("ask", rng.choice([epoch, epoch, max(0, epoch - rng.randrange(1, 4))])))
    return events


@pytest.mark.parametrize("seed", range(60))
def test_the_fold_matches_the_per_event_oracle(seed: int):
    rng = random.Random(seed)
    run, oracle = RunState("oracle"), OracleRun()
    rejections = 0
    for kind, event in _events(rng, 150):
        if kind == "session":
            run.apply_session(event)  # type: ignore[arg-type]
            oracle.apply_session(event)  # type: ignore[arg-type]
        elif kind == "health":
            got, want = _outcome(run.apply_health, event), _outcome(oracle.apply_health, event)
            assert got == want
            rejections += want is not None
        elif kind == "transition":
            got, want = _outcome(run.apply_transition, event), _outcome(oracle.apply_transition, event)
            assert got == want
            rejections += want is not None
        elif kind == "issue":
            run.issued.append(event)  # type: ignore[arg-type]
            oracle.issued.append(event)  # type: ignore[arg-type]
        else:
            epoch = int(event)  # type: ignore[call-overload]
            assert run.seed_states(epoch) == oracle.seed_states(epoch)
            assert run.germinations(epoch) == oracle.germinations(epoch)
            assert run.pending(epoch) == oracle.pending(epoch)
            assert _latest_by_slot(run, epoch) == _latest_by_slot(oracle, epoch)
        assert run.health_per_epoch == oracle.health_per_epoch
        assert run.transitions_per_epoch == oracle.transitions_per_epoch
        assert run.transitions == oracle.transitions
        assert run.refused_before_session == oracle.refused_before_session
    for epoch in range(10):  # the final state, asked once at every epoch going up
        assert run.seed_states(epoch) == oracle.seed_states(epoch)
        assert run.germinations(epoch) == oracle.germinations(epoch)
        assert _latest_by_slot(run, epoch) == _latest_by_slot(oracle, epoch)
    assert rejections > 0, "the sequence must reach the rejection rules"


def test_a_transition_folded_later_for_an_earlier_epoch_keeps_the_slot_state():
    """The state is the last folded transition of epochs <= the epoch asked, not the one of the latest epoch."""
    run = RunState("run-1")
    run.apply_session(session())
    run.apply_transition(transition(3, 11, 0, SeedState.DORMANT, SeedState.GERMINATED))
    assert run.seed_states(2) == {}
    run.apply_transition(transition(2, 11, 0, SeedState.GERMINATED, SeedState.TRAINING))
    assert run.seed_states(2) == {(11, 0): (SeedState.TRAINING, 2)}
    assert run.seed_states(3) == {(11, 0): (SeedState.TRAINING, 2)}
    assert run.seed_states(1) == {}  # an earlier epoch again: answered by a scan
    assert run.germinations(3) == [3]
