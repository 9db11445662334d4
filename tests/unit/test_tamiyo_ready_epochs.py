"""``RunState.ready_epochs`` (one pass with running sums) says exactly what ``complete`` says epoch by epoch,
on runs folded in random orders with gaps, decided epochs and pre-session events."""

from __future__ import annotations

import random

import pytest

from contracts import SeedState, TopicName
from services.tamiyo.run_state import RejectedEvent, RunState
from services.tamiyo.service import fold
from tests.tamiyo_events import epoch_event, health, session, transition

HEALTH, EPOCHS, SESSIONS, TRANSITIONS = (TopicName.TELEMETRY_SEED_HEALTH.value, TopicName.SYSTEM_EVENTS_EPOCH.value,
                                         TopicName.TRAINING_SESSIONS.value, TopicName.LIFECYCLE_SEED_TRANSITIONS.value)
SLOTS = [(11, 0), (11, 1), (22, 0), (22, 1)]


def reference(run: RunState) -> list[int]:
    return sorted(e for e in run.epochs if e not in run.decided and run.complete(e))


def random_events(rng: random.Random, epochs: int) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = [(SESSIONS, session())]
    for epoch in range(epochs):
        moved = rng.random() < 0.3
        for layer_id, seed_idx in SLOTS:
            if rng.random() < 0.9:  # some signals never come
                events.append((HEALTH, health(epoch, layer_id, seed_idx)))
        if moved:
            events.append((TRANSITIONS, transition(epoch, 11, 0, SeedState.DORMANT, SeedState.GERMINATED)))
        if rng.random() < 0.9:  # some epochs never complete
            events.append((EPOCHS, epoch_event(epoch, 0.5, signals=4, transitions=int(moved))))
        if rng.random() < 0.1:
            events.append((HEALTH, health(epoch, 99, 0)))  # a slot the session does not have
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", range(40))
def test_ready_epochs_agree_with_complete_after_every_event(seed):
    rng = random.Random(seed)
    run = RunState("run-1")
    for topic, payload in random_events(rng, epochs=rng.randint(1, 12)):
        try:
            fold(run, topic, payload)
        except RejectedEvent:
            continue
        if run.epochs and rng.random() < 0.2:
            run.decided.add(rng.choice(sorted(run.epochs)))
        assert run.ready_epochs() == reference(run)
