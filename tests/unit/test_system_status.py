"""`esper status` exit codes: down is 3; with --strict, a restarted or lagging service, or an under-replicated
partition, is 4."""

from __future__ import annotations

import pytest

from services.cli.status import EXIT_DOWN, EXIT_NOT_CLEAN, status_exit_code


def service(up: bool = True, restarts: int = 0, lag: int | None = 0, has_lag: bool = True) -> dict:
    return {"up": up, "restarts": restarts, "lag": lag, "has_lag": has_lag}


@pytest.mark.parametrize(("broker_up", "services", "strict", "code"), [
    (True, [service(), service(has_lag=False, lag=None)], False, 0),
    (True, [service(), service(has_lag=False, lag=None)], True, 0),
    (False, [service()], False, EXIT_DOWN),
    (True, [service(), service(up=False)], True, EXIT_DOWN),
    (True, [service(restarts=2)], False, 0),  # without --strict a crash loop between deaths looks healthy
    (True, [service(restarts=2)], True, EXIT_NOT_CLEAN),
    (True, [service(lag=5)], True, EXIT_NOT_CLEAN),
    (True, [service(lag=None)], True, EXIT_NOT_CLEAN),  # unknown lag is not clean either
])
def test_status_exit_code(broker_up, services, strict, code):
    assert status_exit_code(broker_up, services, strict=strict) == code


def test_an_under_replicated_partition_is_not_clean_under_strict_and_down_still_wins():
    assert status_exit_code(True, [service()], strict=True, under_replicated=1) == EXIT_NOT_CLEAN
    assert status_exit_code(True, [service()], strict=False, under_replicated=1) == 0
    assert status_exit_code(True, [service()], strict=True, under_replicated=0) == 0
    assert status_exit_code(False, [service()], strict=True, under_replicated=3) == EXIT_DOWN
