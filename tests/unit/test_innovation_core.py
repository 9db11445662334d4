"""Pure cores of the innovation plane: Karn's generator, Urza's catalogue, Urabrask's measurements."""

from __future__ import annotations

import random
import time

import pytest
import torch

from contracts import (
    BlueprintState,
    CompilationOutcome,
    FieldReport,
    FieldReportOutcome,
    KernelCharacterized,
    KernelReady,
    KernelStatus,
    TopicName,
)
from services.blueprints.compiler import compile_blueprint
from services.blueprints.files import load_blueprints
from services.blueprints.modules import build_module
from services.blueprints.starter import mlp_adapter
from services.karn.generator import Generator, mutate, recombine
from services.karn.starter_library import parse_slot, starter_library
from services.urabrask.characterize import characterize
from services.urza.catalog import Catalog


def report(bp_id: str, outcome: FieldReportOutcome) -> FieldReport:
    return FieldReport(layer_id=1, seed_idx=0, blueprint_id=bp_id, kernel_id="k-1", pre_metric=0.5, post_metric=0.6,
                       outcome=outcome)


def test_starter_library_covers_linear_and_conv_slots_of_several_sizes():
    library = starter_library()
    shapes = {(tuple(b.architecture.input_shape), tuple(b.architecture.output_shape)) for b in library}
    assert ((2,), (8,)) in shapes and ((1, 8, 8), (4, 8, 8)) in shapes and len(shapes) >= 5
    assert len({b.blueprint_id for b in library}) == len(library)
    for bp in library:
        build_module(bp.architecture)
    assert parse_slot("1x8x8:4x8x8") == ((1, 8, 8), (4, 8, 8))
    with pytest.raises(ValueError, match="must look like"):
        parse_slot("64-16")


def test_mutations_and_recombinations_fit_the_same_slot():
    rng = random.Random(0)
    a, b = mlp_adapter(16, 8, 32), mlp_adapter(16, 8, 64)
    children = [mutate(a, rng) for _ in range(20)] + [recombine(a, b, rng) for _ in range(10)]
    children = [c for c in children if c is not None]
    assert len({c.blueprint_id for c in children}) > 5, "mutations differ"
    for child in children:
        assert child.architecture.input_shape == [16] and child.architecture.output_shape == [8]
        assert child.blueprint_id != a.blueprint_id and a.blueprint_id in child.description or "cross" in child.name


def test_karn_keeps_what_fossilized_and_drops_what_was_culled():
    gen = Generator()
    good, bad = mlp_adapter(16, 8, 32), mlp_adapter(16, 8, 16)
    gen.know(good)
    gen.know(bad)
    gen.record(report(bad.blueprint_id, FieldReportOutcome.CULLED))
    assert gen.propose(report(bad.blueprint_id, FieldReportOutcome.CULLED), "x") == []
    gen.record(report(good.blueprint_id, FieldReportOutcome.FOSSILIZED))
    first = gen.propose(report(good.blueprint_id, FieldReportOutcome.FOSSILIZED), "seed-1")
    assert first and all(c.architecture.input_shape == [16] for c in first)
    assert all("bp-" in c.description for c in first)
    again = gen.propose(report(good.blueprint_id, FieldReportOutcome.FOSSILIZED), "seed-1")
    assert again == [], "the same report proposes the same children, which Karn already knows"


def test_catalog_moves_blueprints_through_their_states_and_answers_queries():
    cat = Catalog()
    ok, broken = mlp_adapter(2, 8, 16), mlp_adapter(2, 8, 8)
    for bp in (ok, broken):
        from contracts import BlueprintSubmitted

        cat.apply(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value,
                  BlueprintSubmitted(blueprint_id=bp.blueprint_id, submitted_by="t", blueprint=bp))
    assert {e.state for e in cat.blueprints.values()} == {BlueprintState.PROPOSED}
    kernel, _ = compile_blueprint(ok)
    cat.apply(TopicName.COMPILATION_KERNEL_READY.value,
              KernelReady(blueprint_id=ok.blueprint_id, outcome=CompilationOutcome.READY, kernel=kernel.metadata))
    cat.apply(TopicName.COMPILATION_KERNEL_READY.value,
              KernelReady(blueprint_id=broken.blueprint_id, outcome=CompilationOutcome.FAILED, failure_reason="nope"))
    assert cat.blueprints[ok.blueprint_id].state == BlueprintState.VALIDATING
    assert cat.blueprints[broken.blueprint_id].state == BlueprintState.FAILED
    assert cat.query() == [], "not characterised yet"
    cat.apply(TopicName.VALIDATION_KERNEL_CHARACTERIZED.value, KernelCharacterized(
        kernel_id=kernel.kernel_id, blueprint_id=ok.blueprint_id, device="cpu", latency_ms_p50=0.05,
        latency_ms_p95=0.08, peak_memory_mb=0.01, tags=["low-latency", "low-memory"], passed=True))
    assert cat.blueprints[ok.blueprint_id].state == BlueprintState.CHARACTERIZED
    assert cat.kernels[kernel.kernel_id].status == KernelStatus.VALIDATED
    assert [e.metadata.kernel_id for e in cat.query(input_shape=[2], output_shape=[8], tags=["low-latency"],
                                                    max_latency_ms=0.1, max_memory_mb=1)] == [kernel.kernel_id]
    assert cat.query(input_shape=[64]) == [] and cat.query(max_latency_ms=0.01) == []
    assert cat.query(tags=["high-capacity"]) == []


def test_characterize_measures_and_tags():
    bp = mlp_adapter(64, 16, 256)
    kernel, _ = compile_blueprint(bp)
    result = characterize(build_module(bp.architecture), kernel.metadata, torch.device("cpu"), bp.architecture)
    assert result.passed and result.failure_reason is None
    assert 0 < result.latency_ms_p50 <= result.latency_ms_p95
    params_mb = kernel.metadata.parameter_count * 4 / 2**20
    assert result.peak_memory_mb > params_mb, "parameters plus measured activations"
    assert "high-capacity" in result.tags  # 64*256 + 256*16 weights


class _Clock:
    """``time`` for the latency gate: the real clock, plus the stalls a test adds (no sleeping)."""

    def __init__(self) -> None:
        self.stalled_s = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.stalled_s


class _Stalls(torch.nn.Module):
    """The kernel ``inner``, its calls ``stalled`` stalled by 60 ms on ``clock`` (a process descheduled on a loaded
    machine)."""

    def __init__(self, inner: torch.nn.Module, stalled: range, clock: _Clock) -> None:
        super().__init__()
        self.inner, self.stalled, self.clock, self.calls = inner, stalled, clock, 0

    def forward(self, x):
        self.calls += 1
        if self.calls in self.stalled:
            self.clock.stalled_s += 0.060
        return self.inner(x)


@pytest.mark.parametrize("stalled, within_s, passed, rounds", [
    # two of the first round's five calls stalled (call 1 is the probe, 2 the warm-up): its p95 over the budget,
    # its p50 within it, so it is measured again (a third round only if the machine stalls that one too)
    ((6, 7), 60.0, True, (2, 3)),
    ((6, 7), 0.0, False, (1,)),  # the same, but no time is left for another round
    ((6, 7, 12, 13, 18, 19), 60.0, False, (3,)),  # every round's tail stalled: over the budget after the last
    (range(2, 10**6), 60.0, False, (1,)),  # slow in the median: a slow kernel, not a stall, is not measured again
])
def test_the_latency_gate_measures_again_a_round_whose_tail_stalled(monkeypatch, stalled, within_s, passed, rounds):
    import services.urabrask.characterize as urabrask

    monkeypatch.setattr(urabrask, "WARMUP", 1)
    monkeypatch.setattr(urabrask, "RUNS", 5)
    monkeypatch.setattr(urabrask, "REMEASURE_WITHIN_S", within_s)
    bp = mlp_adapter(2, 8, 16)
    kernel, _ = compile_blueprint(bp)
    clock = _Clock()
    monkeypatch.setattr(urabrask, "time", clock)
    module = _Stalls(build_module(bp.architecture), stalled, clock)
    result = characterize(module, kernel.metadata, torch.device("cpu"), bp.architecture)
    assert result.passed is passed and (module.calls - 1) // 6 in rounds and (module.calls - 1) % 6 == 0
    assert (result.latency_ms_p95 > urabrask.MAX_LATENCY_MS) is not passed
    assert (result.failure_reason is None) is passed


def test_blueprint_files(tmp_path):
    good = tmp_path / "bp.yaml"
    good.write_text("name: x\ndescription: d\ncreated_by: me\narchitecture:\n  input_shape: [4]\n  output_shape: [2]\n"
                    "  layers: [{op: linear, width: 2}]\n")
    [bp] = load_blueprints(good)
    assert bp.blueprint_id.startswith("bp-")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndescription: d\ncreated_by: me\narchitecture:\n  input_shape: [4]\n  output_shape: [2]\n"
                   "  layers: [{op: eval, width: 2}]\n")
    with pytest.raises(ValueError, match=r"blueprint 0: architecture.layers.0.op"):
        load_blueprints(bad)
    forged = tmp_path / "forged.yaml"
    forged.write_text(good.read_text() + "blueprint_id: bp-123\n")
    with pytest.raises(ValueError, match="must be the content hash"):
        load_blueprints(forged)
