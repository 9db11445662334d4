"""Dead letters as DLQ records: headers convention, selection, summary and at-most-once re-drive plans."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.dead_letter import (
    DLQ_HEADER_FAILED_AT,
    DLQ_HEADER_GROUP,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_REDRIVEN_FROM,
    DLQ_HEADER_TOPIC,
)
from services.oona.dlq_records import (
    DlqRecord,
    Selection,
    dead_letter_headers,
    is_redrive_marker,
    marker_headers,
    marker_key,
    parse_source,
    plan_redrive,
    redrive_headers,
    select,
    summarize,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def letter(offset: int, topic: str = "p.telemetry.seed.health", group: str = "tamiyo", reason: str = "bad",
           source_offset: int = 0, minute: int = 0, original=()) -> DlqRecord:
    own = [(DLQ_HEADER_TOPIC, topic.encode()), (DLQ_HEADER_PARTITION, b"1"),
           (DLQ_HEADER_OFFSET, str(source_offset).encode()), (DLQ_HEADER_REASON, reason.encode()),
           (DLQ_HEADER_GROUP, group.encode()),
           (DLQ_HEADER_FAILED_AT, T0.replace(minute=minute).isoformat().encode())]
    return DlqRecord(0, offset, b"run-1", b"value", tuple(dead_letter_headers(list(original), own)))


def marker(offset: int, of: DlqRecord) -> DlqRecord:
    return DlqRecord(of.partition, offset, marker_key(of), None, tuple(marker_headers(of, "t:1:9", T0)))


def test_a_dead_letter_keeps_the_original_headers_beside_its_own_and_drops_clashing_names():
    headers = dead_letter_headers([("traceparent", b"00-abc"), (DLQ_HEADER_REASON, b"forged"), ("x", None)],
                                  [(DLQ_HEADER_REASON, b"real")])
    assert headers == [("traceparent", b"00-abc"), ("x", None), (DLQ_HEADER_REASON, b"real")]
    record = DlqRecord(0, 3, None, b"v", tuple(headers))
    assert record.original_headers == [("traceparent", b"00-abc"), ("x", None)]
    assert record.reason == "real"
    assert dead_letter_headers(None, [(DLQ_HEADER_REASON, b"r")]) == [(DLQ_HEADER_REASON, b"r")]


def test_selection_by_topic_with_or_without_prefix_group_reason_and_offsets():
    records = [letter(0, reason="UnknownSchemaError: fingerprint 13"), letter(1, group="nissa"),
               letter(2, topic="p.system.events.epoch", reason="ContractViolation: accuracy"), letter(3)]
    assert [r.offset for r in select(records, Selection(topic="telemetry.seed.health", prefix="p."))] == [0, 1, 3]
    assert [r.offset for r in select(records, Selection(topic="p.system.events.epoch", prefix="p."))] == [2]
    assert [r.offset for r in select(records, Selection(group="nissa"))] == [1]
    assert [r.offset for r in select(records, Selection(reason="unknownschema"))] == [0]
    assert [r.offset for r in select(records, Selection(from_offset=1, to_offset=2))] == [1, 2]
    assert select(records, Selection(topic="telemetry.seed.health")) == []  # the prefix is not guessed


def test_summary_counts_by_topic_group_and_reason_with_first_and_last_seen_and_redriven():
    a, b, c = letter(0, minute=5), letter(1, minute=1), letter(4, reason="other", minute=3)
    records = [a, b, c, marker(5, a)]
    rows = summarize(records)
    assert [(r.topic, r.group, r.reason, r.count, r.redriven) for r in rows] == [
        ("p.telemetry.seed.health", "tamiyo", "bad", 2, 1), ("p.telemetry.seed.health", "tamiyo", "other", 1, 0)]
    assert (rows[0].first_seen, rows[0].last_seen) == (T0.replace(minute=1), T0.replace(minute=5))
    assert (rows[0].first_offset, rows[0].last_offset) == (0, 1)
    assert summarize(records, Selection(reason="zzz")) == []


def test_a_dead_letter_is_planned_for_redrive_at_most_once():
    a, b, c = letter(0), letter(1), letter(2, reason="other")
    first = plan_redrive([a, b, c], Selection(reason="bad"))
    assert [r.offset for r in first.todo] == [0, 1] and first.already == []
    after = [a, b, c, marker(3, a), marker(4, b)]
    second = plan_redrive(after, Selection(reason="bad"))
    assert second.todo == [] and [r.offset for r in second.already] == [0, 1]
    assert [r.offset for r in plan_redrive(after, Selection()).todo] == [2], "markers are never re-driven"


def test_a_marker_on_another_partition_does_not_count():
    a = letter(0)
    elsewhere = DlqRecord(1, 7, None, None, tuple(marker_headers(a, "t:1:9", T0)))
    assert [r.offset for r in plan_redrive([a, elsewhere], Selection()).todo] == [0]


def test_redriven_record_keeps_original_headers_and_names_the_dead_letter_it_came_from():
    once = letter(7, original=[("traceparent", b"00-abc"), (DLQ_HEADER_REDRIVEN_FROM, b"esper.dlq:0:2")])
    headers = redrive_headers(once, "esper.dlq")
    assert headers == [("traceparent", b"00-abc"), (DLQ_HEADER_REDRIVEN_FROM, b"esper.dlq:0:7")]


class _Msg:
    def __init__(self, headers):
        self._headers = headers

    def headers(self):
        return self._headers


def test_markers_are_told_from_dead_letters():
    a = letter(0)
    assert is_redrive_marker(_Msg(list(marker(1, a).headers)))
    assert not is_redrive_marker(_Msg(list(a.headers)))
    assert not is_redrive_marker(_Msg(None))
    assert marker(1, a).redrive_of == 0 and a.redrive_of is None


def test_parse_source():
    assert parse_source("telemetry.seed.health:0:17") == ("telemetry.seed.health", 0, 17)
    for bad in ("telemetry.seed.health:17", "t:x:1", ":0:1", "t:0:-1", ""):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_missing_headers_read_as_unknown_not_an_error():
    bare = DlqRecord(0, 0, None, b"x", (), timestamp_ms=1_700_000_000_000)
    assert (bare.source_topic, bare.source_partition, bare.reason, bare.group) == ("unknown", None,
                                                                                   "no reason recorded", "")
    assert bare.failed_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert bare.source == "unknown:-:-"


def test_nissa_keeps_dead_letters_not_redrive_markers():
    from tests.unit.test_nissa_batch import FakeMessage, new_batch

    a = letter(0)
    batch = new_batch()
    batch.add([FakeMessage("esper.dlq", 0, 0, a.value, a.key, list(a.headers)),
               FakeMessage("esper.dlq", 0, 1, None, marker_key(a), list(marker(1, a).headers))])
    rows = batch.drain()["dead_letters"]
    assert sum(t.num_rows for t in rows) == 1
    assert rows[0].column("reason").to_pylist() == ["bad"]
