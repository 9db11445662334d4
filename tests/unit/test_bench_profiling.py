"""``esper bench --profile``: a figure's profile covers its own path, and the threads started in it."""

from __future__ import annotations

import threading

import pytest

from services.bench.profiling import own_path, profile_call


def _busy_in_a_thread() -> None:
    total = 0
    for i in range(20_000):
        total += i


def _ceiling_work() -> None:
    sum(range(1000))


def _figure() -> list[int]:
    _ceiling_work()  # outside the figure's own path: not in its profile
    with own_path():
        thread = threading.Thread(target=_busy_in_a_thread)
        thread.start()
        thread.join()
    with own_path("other"):
        sorted(range(100))
    return [1, 2]


@pytest.mark.timeout(30)
def test_the_profile_holds_the_own_path_and_the_threads_it_started(tmp_path):
    result = profile_call("demo", _figure, tmp_path, top=40)

    assert result == [1, 2]  # the figure's own result comes back unchanged
    text = (tmp_path / "demo.txt").read_text()
    assert text.startswith("# esper bench profile: demo ")
    assert "# load average" in text and "2 thread spans" in text and "# the own path: wall " in text
    assert "_busy_in_a_thread" in text  # the started thread's work
    assert "_ceiling_work" not in text
    assert "Ordered by: internal time" in text
    other = (tmp_path / "demo-other.txt").read_text()  # a named part: a file of its own
    assert "sorted" in other and "_busy_in_a_thread" not in other


@pytest.mark.timeout(30)
def test_without_a_profile_the_own_path_changes_nothing(tmp_path):
    original_run = threading.Thread.run

    assert _figure() == [1, 2]
    profile_call("first", lambda: None, tmp_path)

    assert threading.Thread.run is original_run
    assert list(tmp_path.iterdir()) == []  # no own path ran: nothing to write
