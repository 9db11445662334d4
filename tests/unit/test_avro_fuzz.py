"""Differential fuzzing, bounded: every decoder returns fastavro's record or raises DecodeError (no broker).

The harness is ``tests/fuzz/avro_differential.py``; ``make fuzz`` runs it for a million
inputs per decoder. Here: every extreme varint at every varint of one value of every writer
schema (exhaustive), a seeded random run, and a derandomized hypothesis search, so CI is
deterministic and takes seconds.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.oona.avro import encode_long
from tests.fuzz.avro_differential import (
    DECODERS,
    EXTREME_VARINTS,
    Differential,
    Figures,
    mutate,
    pick,
    run,
)

DIFF = Differential()


def checked(spec, values: list[bytes]) -> Figures:
    DIFF.figures = Figures()
    DIFF.check(spec, values)
    return DIFF.figures


@pytest.mark.parametrize("target", DIFF.targets, ids=lambda t: f"{t.spec.record_name}-v{t.version}")
def test_every_extreme_varint_at_every_varint_of_every_writer_schema(target):
    seed, spans = target.seeds[0], target.spans[0]
    values = [seed]
    for start, end in spans:
        left = len(seed) - end
        for new in [*EXTREME_VARINTS, encode_long(left), encode_long(left + 1), encode_long(-left)]:
            values.append(seed[:start] + new + seed[end:])
    values.append(seed)
    fig = checked(target.spec, values)
    assert fig.failures == [] and fig.columnar_batch_errors == 0
    assert fig.cases["codec"] == len(values) and fig.accepted["codec"] >= 2  # the seed itself, at both ends
    assert fig.rejected["row"] > 0
    if target.columnar is not None:
        assert fig.cases["columnar"] == len(values) and fig.accepted["columnar"] >= 2


def test_a_seeded_random_run_finds_nothing():
    fig = run(cases=1500, seed=5, chunk=64)
    assert fig.failures == [] and fig.columnar_batch_errors == 0
    assert all(fig.cases[d] >= 1500 for d in DECODERS)
    assert all(0 < fig.accepted[d] < fig.cases[d] for d in DECODERS)  # both verdicts were exercised


class HypothesisChooser:
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))


@settings(max_examples=250, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_values_decode_as_fastavro_reads_them_or_are_a_decode_error(data):
    ch = HypothesisChooser(data)
    target = pick(ch, DIFF.targets)
    value, how = mutate(ch, target, DIFF.fingerprints)
    good = target.seeds[0]
    fig = checked(target.spec, [good, value, good])  # the columnar decoder flags one row of a batch
    assert fig.failures == [] and fig.columnar_batch_errors == 0, how
    assert fig.accepted["codec"] >= 2 and fig.accepted["row"] >= 2
