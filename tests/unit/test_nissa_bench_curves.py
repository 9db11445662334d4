"""The Nissa benchmarks' pure parts: sizes from the environment, the generated fill, the flatness figure."""

from __future__ import annotations

import duckdb
import pytest

from services.bench import nissa_ingest, nissa_replay
from services.bench.start_up_curves import Point
from services.nissa.sink import sink_tables


def test_sizes_come_from_the_environment_or_default():
    assert nissa_ingest.parse_sizes(None) == (1_000_000, 10_000_000)
    assert nissa_ingest.parse_sizes("200_000,20000") == (20_000, 200_000)
    with pytest.raises(ValueError, match="ESPER_BENCH_INGEST_SIZES"):
        nissa_ingest.parse_sizes("1000")
    assert nissa_replay.parse_sizes("") == (100_000, 1_000_000)
    assert nissa_replay.parse_sizes("5000") == (5000,)
    with pytest.raises(ValueError, match="ESPER_BENCH_REPLAY_SIZES"):
        nissa_replay.parse_sizes("0,10")


@pytest.mark.parametrize("name", ["health_signal", "epoch_completed", "dead_letters"])
def test_the_fill_generates_rows_with_their_own_event_ids(name):
    table = next(t for t in sink_tables() if t.name == name)
    with duckdb.connect() as con:
        con.execute(table.ddl())
        con.execute(nissa_ingest.fill_sql(table, 1000))
        rows, distinct = con.execute(
            f'SELECT count(*), count(DISTINCT {"event_id" if "event_id" in table.column_names else "kafka_offset"}) '
            f'FROM "{name}"').fetchone()
    assert rows == distinct == 1000


def test_the_curve_is_flat_when_the_time_does_not_grow_with_the_rows_stored():
    flat = nissa_ingest.curve_result(1000, [(Point(1_000_000, 2.0), 1.0), (Point(10_000_000, 2.0), 1.0)])
    assert flat.details["exponent"] == 0.0 and flat.details["cpu_exponent"] == 0.0 and flat.ratio == 1.0
    linear = nissa_ingest.curve_result(1000, [(Point(1_000_000, 1.0), 1.0), (Point(10_000_000, 10.0), 10.0)])
    assert linear.details["exponent"] == 1.0 and linear.ratio == pytest.approx(0.1)
