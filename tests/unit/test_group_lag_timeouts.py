"""``group_lag`` on a broker too loaded to answer in time: the lag is unknown, with why; nothing raises.

The admin client's futures raise the builtin TimeoutError from ``result(timeout=...)``; the scale-out
bench sampled the lag this way and a timeout at load ~440 ended the whole figure.
"""

from __future__ import annotations

from concurrent.futures import Future
from unittest import mock

import pytest

from services.cli import status
from services.oona.settings import KafkaSettings


def _never_done() -> Future:
    return Future()  # result(timeout=...) raises TimeoutError


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


@pytest.mark.parametrize("stuck", ["describe", "offsets"])
@pytest.mark.timeout(30)
def test_an_admin_answer_that_times_out_is_an_unknown_lag(stuck):
    admin = mock.Mock()
    admin.describe_consumer_groups.return_value = {"g": _never_done() if stuck == "describe" else _done(None)}
    admin.list_consumer_group_offsets.return_value = {"g": _never_done()}
    with mock.patch.object(status.clients, "admin", return_value=admin), \
            mock.patch.object(status, "partitions_of", return_value=[("t", 0)]), \
            mock.patch.object(status, "end_offsets", return_value={("t", 0): 5}):
        lag = status.group_lag(KafkaSettings(), "tamiyo", timeout_s=0.01)

    assert lag.events is None
    assert "within 0.01s" in lag.detail
