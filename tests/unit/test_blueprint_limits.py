"""Blueprint IR limits: judged from the IR at decode and again before building, never by allocating."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import Blueprint, BlueprintArchitecture, BlueprintOp, BlueprintSubmitted, OpSpec, TopicName
from contracts.blueprint_ir import MAX_ACTIVATION_BYTES, MAX_DEPTH, MAX_DIM, MAX_OPS, MAX_PARAMETERS, plan
from services.blueprints.artifacts import probe
from services.blueprints.compiler import compile_blueprint
from services.blueprints.files import load_blueprints
from services.blueprints.modules import BlueprintError, build_module, parameter_count
from services.blueprints.starter import for_slot, mlp_adapter
from services.core.errors import ContractViolationError
from services.karn.starter_library import starter_library
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from tests.blueprint_poison import claiming, out_of_bounds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "blueprints"
SUBMITTED = topic_spec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value)


def encoded(submission: BlueprintSubmitted) -> bytes:
    """What a plain producer could put on the topic: the encoder does not validate."""
    return SingleObjectCodec().encode(SUBMITTED, SUBMITTED.message_type(sender_id="tests", topic=SUBMITTED.name,
                                                                        payload=submission))


@pytest.mark.parametrize("label", list(out_of_bounds()))
def test_an_out_of_bounds_blueprint_is_a_contract_violation_at_decode(label):
    data = encoded(out_of_bounds()[label])
    with pytest.raises(ContractViolationError, match="blueprint IR out of bounds"):
        SingleObjectCodec().decode(SUBMITTED, data)


class _NoAllocation:
    """Makes any weight-bearing torch layer fail loudly: proof that nothing was built."""

    def __init__(self, monkeypatch) -> None:
        def refuse(*_args, **_kwargs):
            raise AssertionError("a torch layer was built before the blueprint was judged")

        for layer in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.MultiheadAttention):
            monkeypatch.setattr(layer, "__init__", refuse)


@pytest.mark.parametrize("label", list(out_of_bounds()))
def test_the_builder_refuses_out_of_bounds_ir_before_allocating(label, monkeypatch):
    blueprint = out_of_bounds()[label].blueprint  # reached the builder without validation
    _NoAllocation(monkeypatch)
    with pytest.raises(BlueprintError, match="out of bounds"):
        build_module(blueprint.architecture)
    with pytest.raises(BlueprintError, match="out of bounds"):
        compile_blueprint(blueprint)


def test_the_parameter_budget_is_checked_before_any_weight_is_allocated(monkeypatch):
    wide = mlp_adapter(1024, 1024, 4096)  # within the IR limits, over Tezzeret's default budget
    assert plan(wide.architecture).parameters > 2_000_000
    _NoAllocation(monkeypatch)
    with pytest.raises(BlueprintError, match="exceed the budget"):
        compile_blueprint(wide)


def test_the_limits_name_every_bound_they_break():
    arch = BlueprintArchitecture.model_construct(
        ir_version=1, input_shape=[MAX_DIM + 1, 1, 1, 1], output_shape=[0],
        layers=[OpSpec(op="residual")] * (MAX_OPS + 1))
    with pytest.raises(BlueprintError) as caught:
        build_module(arch)
    reason = str(caught.value)
    for part in ("input_shape has 4 dimensions", "output_shape [0]", f"{MAX_OPS + 1} ops",
                 f"{MAX_OPS + 1} residual ops nest"):
        assert part in reason
    too_many_parameters = [dict(op="linear", width=4096), dict(op="linear", width=4096)]
    with pytest.raises(ValidationError, match="parameters exceed the IR limit"):
        BlueprintArchitecture(input_shape=[4096], output_shape=[4096], layers=too_many_parameters)
    attention_on_a_big_map = [dict(op="attention_lite", heads=16)]
    with pytest.raises(ValidationError, match="MiB of activations per sample exceed"):
        BlueprintArchitecture(input_shape=[16, 64, 64], output_shape=[16, 64, 64], layers=attention_on_a_big_map)


def _every_known_blueprint() -> list[Blueprint]:
    known = starter_library()
    known += for_slot([16], [8]) + for_slot([4, 6, 6], [8, 6, 6]) + for_slot([4, 8, 8], [8, 4, 4])
    for path in sorted(EXAMPLES.glob("*.y*ml")):
        known += load_blueprints(path)
    return known


def test_every_starter_and_example_blueprint_is_within_the_limits_and_planned_exactly():
    known = _every_known_blueprint()
    assert len(known) > 10 and any(len(b.architecture.input_shape) == 3 for b in known)
    for bp in known:
        planned = plan(bp.architecture)
        assert planned.problem is None, bp.name
        assert planned.parameters <= MAX_PARAMETERS and planned.activation_bytes <= MAX_ACTIVATION_BYTES
        assert planned.parameters == parameter_count(build_module(bp.architecture)), bp.name


_OPS = st.sampled_from(list(BlueprintOp))
_OP_SPECS = st.builds(
    lambda op, width, k, heads: OpSpec(op=op, width=width, kernel_size=k, heads=heads),
    _OPS,
    st.none() | st.integers(1, 12),
    st.none() | st.integers(1, 7),
    st.none() | st.integers(1, 4),
)
_SHAPES = st.one_of(st.lists(st.integers(1, 12), min_size=1, max_size=1),
                    st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)).map(list),
                    st.lists(st.integers(1, 6), min_size=2, max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(in_shape=_SHAPES, out_shape=_SHAPES, ops=st.lists(_OP_SPECS, min_size=1, max_size=6))
def test_any_small_blueprint_compiles_or_fails_with_a_reason_and_the_plan_is_exact(in_shape, out_shape, ops):
    try:
        arch = BlueprintArchitecture(input_shape=in_shape, output_shape=out_shape, layers=ops)
    except ValidationError:
        return
    bp = Blueprint(name="fuzz", description="fuzz", created_by="tests", architecture=arch)
    planned = plan(arch)
    try:
        module = build_module(arch)
    except BlueprintError:
        assert planned.problem is not None, "the builder refused what the plan accepted"
        return
    assert planned.problem is None
    assert planned.parameters == parameter_count(module)
    assert list(probe(module, in_shape, batch=2).shape[1:]) == list(planned.final_shape) == out_shape
    try:
        kernel, _ = compile_blueprint(bp)
    except BlueprintError:
        return  # e.g. a non-finite probe: an answer with a reason, never another exception
    assert kernel.metadata.parameter_count == planned.parameters


def test_a_submission_that_claims_another_blueprints_id_is_a_contract_violation():
    genuine = mlp_adapter(2, 8, 24)
    with pytest.raises(ContractViolationError, match="must be the content hash of its architecture"):
        SingleObjectCodec().decode(SUBMITTED, encoded(claiming(genuine.blueprint_id)))
    with pytest.raises(ValidationError, match="is not the id of the submitted blueprint"):
        BlueprintSubmitted(blueprint_id=mlp_adapter(2, 8, 16).blueprint_id, submitted_by="x", blueprint=genuine)
    assert SingleObjectCodec().decode(SUBMITTED, encoded(BlueprintSubmitted(
        blueprint_id=genuine.blueprint_id, submitted_by="x", blueprint=genuine))).payload.blueprint == genuine


def test_a_depth_of_residuals_within_the_limit_builds_and_runs():
    ops = [dict(op="linear", width=8), dict(op="relu")] + [dict(op="residual")] * MAX_DEPTH
    arch = BlueprintArchitecture(input_shape=[8], output_shape=[8], layers=[OpSpec(**o) for o in ops])
    assert probe(build_module(arch), [8]).shape == (4, 8)


def test_tezzeret_answers_each_blueprint_once_and_again_after_an_abort():
    from services.tezzeret.answers import AnsweredBlueprints

    answers = AnsweredBlueprints(committed=["bp-old"])
    assert not answers.claim("bp-old", 0)
    assert answers.claim("bp-a", 5) and not answers.claim("bp-a", 9), "a duplicate in the same batch: once"
    answers.aborted()
    assert answers.claim("bp-a", 5), "the aborted answer is given again"
    assert answers.claim("bp-a", 5), "handled again record by record after an abort: still the one to answer"
    answers.committed_now()
    assert not answers.claim("bp-a", 5) and not answers.claim("bp-a", 9)
