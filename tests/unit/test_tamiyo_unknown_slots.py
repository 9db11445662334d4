"""Events of slots the session does not have, folded before the session arrived: they must not make an epoch
look complete, and they are reported so the service dead-letters them (as it does once the session is known)."""

from __future__ import annotations

import pytest

from contracts import SeedState, TopicName
from services.tamiyo.run_state import RejectedEvent, RunState
from services.tamiyo.service import fold
from tests.tamiyo_events import epoch_event, health, session, transition

HEALTH, EPOCHS, SESSIONS, TRANSITIONS = (TopicName.TELEMETRY_SEED_HEALTH.value, TopicName.SYSTEM_EVENTS_EPOCH.value,
                                         TopicName.TRAINING_SESSIONS.value, TopicName.LIFECYCLE_SEED_TRANSITIONS.value)


def test_a_signal_of_an_unknown_slot_before_the_session_does_not_complete_the_epoch():
    run = RunState("run-1")
    fold(run, HEALTH, health(0, 99, 0))  # layer 99 is not in the session
    for layer_id, seed_idx in ((11, 0), (11, 1), (22, 0)):  # three of the four real slots
        fold(run, HEALTH, health(0, layer_id, seed_idx))
    fold(run, TRANSITIONS, transition(0, 98, 1, SeedState.DORMANT, SeedState.GERMINATED))
    fold(run, EPOCHS, epoch_event(0, 0.5, signals=4, transitions=1))
    fold(run, SESSIONS, session())
    assert not run.complete(0), "an unknown slot's signal stood in for the missing real one"
    assert sorted(run.refused_before_session) == [("health", 99, 0, 0), ("transition", 98, 1, 0)]
    assert run.transitions == []
    fold(run, HEALTH, health(0, 22, 1))
    fold(run, TRANSITIONS, transition(0, 11, 0, SeedState.DORMANT, SeedState.GERMINATED))
    assert run.complete(0)


def test_known_slots_before_the_session_count_and_nothing_is_refused():
    run = RunState("run-1")
    for layer_id, seed_idx in ((11, 0), (11, 1), (22, 0), (22, 1)):
        fold(run, HEALTH, health(0, layer_id, seed_idx))
    fold(run, EPOCHS, epoch_event(0, 0.5))
    fold(run, SESSIONS, session())
    assert run.complete(0) and run.refused_before_session == []


def test_after_the_session_an_unknown_slot_is_refused_at_once():
    run = RunState("run-1")
    fold(run, SESSIONS, session())
    with pytest.raises(RejectedEvent, match="no seed slot 99:0"):
        fold(run, HEALTH, health(0, 99, 0))
