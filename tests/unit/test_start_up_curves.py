"""The start-up curve's arithmetic (exponents, rates, the result's verdict) and its log of runs; no timing."""

from __future__ import annotations

import math

import pytest

from contracts import EpochCompleted, HealthSignal, SessionStatus, TopicName, TrainingSessionEvent
from services.bench.start_up_curves import (
    EPOCHS,
    EVENTS_PER_RUN,
    SIZES,
    SLOTS,
    Point,
    curve_details,
    curve_result,
    exponent,
    parse_sizes,
    read_to_ends,
    run_events,
)


def test_exponent_is_one_for_linear_growth_and_two_for_quadratic() -> None:
    assert exponent(Point(10_000, 2.0), Point(100_000, 20.0)) == pytest.approx(1.0)
    assert exponent(Point(10_000, 1.0), Point(100_000, 100.0)) == pytest.approx(2.0)
    # A fixed cost makes the growth look better than linear at small sizes.
    assert exponent(Point(10_000, 3.0 + 0.1), Point(100_000, 3.0 + 1.0)) == pytest.approx(
        math.log(4.0 / 3.1) / math.log(10))


@pytest.mark.parametrize(("small", "large"), [
    (Point(100, 1.0), Point(100, 2.0)),  # not two sizes
    (Point(1000, 1.0), Point(100, 2.0)),  # decreasing
    (Point(100, 0.0), Point(1000, 2.0)),  # no time
])
def test_exponent_refuses_what_has_none(small: Point, large: Point) -> None:
    with pytest.raises(ValueError):
        exponent(small, large)


def test_details_per_size_and_between_sizes() -> None:
    details = curve_details([Point(1_000_000, 50.0), Point(10_000, 1.0), Point(100_000, 5.0)])  # any order
    assert details["seconds_at_10k"] == 1.0
    assert details["events_per_s_at_10k"] == 10_000
    assert details["events_per_s_at_100k"] == 20_000
    assert details["events_per_s_at_1M"] == 20_000
    assert details["exponent_10k_to_100k"] == pytest.approx(math.log10(5), abs=1e-3)
    assert details["exponent_100k_to_1M"] == pytest.approx(1.0)
    assert details["exponent_10k_to_1M"] == pytest.approx(math.log(50) / math.log(100), abs=1e-3)
    assert details["marginal_events_per_s_10k_to_100k"] == 90_000 // 4
    assert details["worst_exponent"] == pytest.approx(1.0)
    assert details["no_worse_than_linear"] == "yes"


def test_worse_than_linear_is_said() -> None:
    details = curve_details([Point(10_000, 1.0), Point(100_000, 5.0), Point(300_000, 30.0)])
    assert details["worst_exponent"] > 1.0
    assert details["no_worse_than_linear"] == "no"
    assert "exponent_100k_to_300k" in details


def test_linear_within_the_measured_precision_is_linear() -> None:
    assert curve_details([Point(10_000, 1.0), Point(100_000, 10.05)])["no_worse_than_linear"] == "yes"
    assert curve_details([Point(10_000, 1.0), Point(100_000, 10.3)])["no_worse_than_linear"] == "no"


def test_a_curve_needs_two_sizes() -> None:
    with pytest.raises(ValueError):
        curve_details([Point(10_000, 1.0)])


def test_result_holds_the_largest_rate_against_the_smallest() -> None:
    linear_plus_fixed = curve_result("x", [Point(10_000, 3.0), Point(1_000_000, 50.0)])
    assert linear_plus_fixed.value == pytest.approx(20_000)
    assert linear_plus_fixed.baseline == pytest.approx(10_000 / 3)
    assert linear_plus_fixed.meets_target is True
    assert linear_plus_fixed.name == "x at 1M events on the log"
    worse = curve_result("x", [Point(10_000, 1.0), Point(1_000_000, 150.0)], {"note": "n"})
    assert worse.meets_target is False
    assert worse.ratio < 1
    assert worse.details["note"] == "n"


def test_read_to_ends_needs_every_partition_at_its_end() -> None:
    ends = {("a", 0): 10, ("a", 1): 0, ("b", 0): 5}
    assert read_to_ends({("a", 0): 10, ("b", 0): 7}, ends)  # an empty partition needs no position
    assert not read_to_ends({("a", 0): 9, ("b", 0): 5}, ends)
    assert not read_to_ends({("a", 0): 10, ("b", 0): -1001}, ends)  # nothing read yet
    assert not read_to_ends({("a", 0): 10}, ends)


def test_sizes_from_the_environment() -> None:
    assert parse_sizes(None) == SIZES
    assert parse_sizes(" ") == SIZES
    assert parse_sizes("300_000,10000, 100000") == (10_000, 100_000, 300_000)
    for bad in ("10000", "0,100", "10k,100k"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_a_run_is_a_session_its_epochs_and_its_end() -> None:
    events = run_events("r")
    assert len(events) == EVENTS_PER_RUN
    (first_topic, first), (last_topic, last) = events[0], events[-1]
    assert first_topic is last_topic is TopicName.TRAINING_SESSIONS
    assert isinstance(first, TrainingSessionEvent) and first.session.status is SessionStatus.RUNNING
    assert isinstance(last, TrainingSessionEvent) and last.session.status is SessionStatus.COMPLETED
    assert len(first.session.seeds) == SLOTS
    epochs = [p for t, p in events if t is TopicName.SYSTEM_EVENTS_EPOCH]
    assert [e.state.epoch for e in epochs if isinstance(e, EpochCompleted)] == list(range(EPOCHS))
    signals = [p for t, p in events if t is TopicName.TELEMETRY_SEED_HEALTH]
    assert all(isinstance(s, HealthSignal) for s in signals)
    slots = {(s.layer_id, s.seed_idx) for s in signals if isinstance(s, HealthSignal)}
    assert slots == {(s.layer_id, s.seed_idx) for s in first.session.seeds}
    # Every epoch declares the signals it had: Tamiyo can tell when one is complete.
    assert all(e.health_signals == SLOTS for e in epochs if isinstance(e, EpochCompleted))
