"""Bench results: each figure as a fraction of its ceiling, the targets it carries, the JSON and the table.

No timing is asserted here (speed lives in ``esper bench``): only the arithmetic and the bookkeeping.
"""

from __future__ import annotations

import json

import pytest

from services.bench.bus_throughput import telemetry_batch
from services.bench.ceilings import arrow_insert_rate, stored_rows
from services.bench.results import BenchResult, Ceiling, ceiling_rows, write_json
from services.nissa.tables import arrow_batch, row_from_record, table_for
from services.oona.codec import SingleObjectCodec, message_to_record
from services.oona.topic_registry import topic_spec


def rate(value: float, *ceilings: Ceiling, target: float | None = None) -> BenchResult:
    return BenchResult("ingest", "events/s", value, "naive", 1_000.0, target=target, ceilings=list(ceilings))


def latency(value: float, *ceilings: Ceiling) -> BenchResult:
    return BenchResult("decision", "ms p50", value, "bare GCN", 4.0, higher_is_better=False, ceilings=list(ceilings))


def test_a_rate_is_its_share_of_the_ceiling_rate():
    result = rate(60_000, Ceiling("raw consume", 240_000))
    assert result.fraction_of_ceiling == pytest.approx(0.25)


def test_a_time_is_the_ceiling_time_over_its_own():
    # 6 ms against a 4 ms bare forward: two thirds of the limit's speed (1.5x its time).
    assert latency(6.0, Ceiling("bare GCN", 4.0)).fraction_of_ceiling == pytest.approx(2 / 3)
    assert latency(4.0, Ceiling("bare GCN", 4.0)).fraction_of_ceiling == pytest.approx(1.0)


def test_nothing_measured_is_no_fraction_rather_than_a_division_by_zero():
    assert rate(0.0, Ceiling("raw consume", 240_000)).fraction_of_ceiling == 0.0
    assert rate(60_000, Ceiling("raw consume", 0.0)).fraction_of_ceiling == 0.0
    assert rate(60_000).fraction_of_ceiling is None


def test_a_ratio_target_is_met_at_its_fraction_and_missed_below():
    ceiling = Ceiling("pre-encoded produce", 100_000, min_fraction=0.8)
    assert rate(80_000, ceiling).meets_target is True
    assert rate(79_999, ceiling).meets_target is False
    slow = Ceiling("bare GCN", 4.0, min_fraction=1 / 1.5)
    assert latency(6.0, slow).meets_target is True
    assert latency(6.1, slow).meets_target is False


def test_every_target_carried_must_be_met():
    consume = Ceiling("raw consume", 500_000, min_fraction=0.4)
    insert = Ceiling("arrow insert", 1_000_000)  # reported only: no target of its own
    assert rate(210_000, consume, insert, target=200_000).meets_target is True
    assert rate(190_000, consume, insert, target=200_000).meets_target is False  # absolute missed
    assert rate(210_000, Ceiling("raw consume", 600_000, 0.4), target=200_000).meets_target is False  # ratio missed
    assert rate(210_000, insert).meets_target is None  # nothing to meet


def test_the_overhead_target_still_stands_beside_ceilings():
    step = BenchResult("step", "ms", 104.0, "plain", 100.0, higher_is_better=False, max_overhead=0.05,
                       ceilings=[Ceiling("bare step", 80.0)])
    assert step.meets_target is True
    step.value = 106.0
    assert step.meets_target is False
    assert step.as_dict()["overhead"] == pytest.approx(0.06)


def test_json_carries_the_primary_ceiling_and_every_ceiling(tmp_path):
    result = rate(100_000, Ceiling("raw consume", 400_000, 0.4), Ceiling("arrow insert", 1_000_000),
                  target=200_000)
    out = tmp_path / "bench.json"
    write_json([result], out)
    payload = json.loads(out.read_text())
    (entry,) = payload["results"]
    assert (entry["ceiling_name"], entry["ceiling"], entry["fraction_of_ceiling"]) == ("raw consume", 400_000, 0.25)
    assert [(c["name"], c["fraction_of_ceiling"], c["meets_target"]) for c in entry["ceilings"]] == [
        ("raw consume", 0.25, False), ("arrow insert", 0.1, None)]
    assert entry["meets_target"] is False and entry["target"] == 200_000 and entry["ratio"] == 100.0
    assert len(payload["machine"]["load_average"]) == 3
    assert payload["failed"] == {}


def test_a_failed_figure_is_named_in_the_json_with_its_error(tmp_path):
    out = tmp_path / "bench.json"
    write_json([rate(100_000.0)], out, {"replay": "FatalError: could not read 1 partition range(s) within 60s"})
    payload = json.loads(out.read_text())
    assert payload["failed"] == {"replay": "FatalError: could not read 1 partition range(s) within 60s"}
    assert [r["name"] for r in payload["results"]] == ["ingest"]  # the figures that ran are kept


def test_a_figure_without_ceiling_keeps_its_old_fields():
    entry = latency(8.0).as_dict()
    assert entry["ceiling"] is None and entry["fraction_of_ceiling"] is None and entry["ceilings"] == []
    assert entry["baseline"] == 4.0 and entry["ratio"] == 0.5 and entry["meets_target"] is None


def test_table_rows_one_per_ceiling_with_its_verdict():
    result = rate(100_000, Ceiling("raw consume", 400_000, 0.4), Ceiling("arrow insert", 1_000_000))
    assert ceiling_rows(result) == [
        ("  ceiling: raw consume", "400,000.0 events/s", "", "25.0%", ">= 40% of it [red]missed[/]"),
        ("  ceiling: arrow insert", "1,000,000.0 events/s", "", "10.0%", ""),
    ]


def test_the_insert_ceiling_stores_every_row_it_times(tmp_path):
    spec = topic_spec("telemetry.seed.health")
    codec = SingleObjectCodec()
    table = table_for(spec, codec.store)
    rows = [row_from_record(table, message_to_record(m), 0, offset)
            for offset, m in enumerate(telemetry_batch(spec, 50))]
    assert arrow_insert_rate(table, arrow_batch(table, rows), tmp_path / "a.duckdb") > 0
    again = stored_rows(tmp_path / "a.duckdb", table)
    assert again.num_rows == 50 and again.column_names == table.column_names
    assert arrow_insert_rate(table, again, tmp_path / "b.duckdb") > 0
