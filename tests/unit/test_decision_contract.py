"""AdaptationDecision v2: the decision -> command link as typed fields, and v1 records read into them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts import AdaptationDecision, AdaptationType, CommandAction, TopicName, adaptation_type_of
from services.core.paths import SCHEMAS_DIR
from services.oona.codec import SingleObjectCodec
from services.oona.schema_store import SchemaStore, history_versions
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import record
from services.tamiyo.run_state import RunState
from tests.fixtures.write_fixture_logs import fixture_path, read_fixture_log
from tests.legacy_decisions import RECORD, v1_decision_bytes

BASE = dict(decision_id="d-1", layer_name="body.0", adaptation_type="add_seed", confidence=1.0, urgency=0.5)
SPEC = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value)


def test_the_link_is_typed_and_bounded():
    decision = AdaptationDecision(**BASE, command_id="c-1", action="germinate", family="mlp")
    assert (decision.command_id, decision.action, decision.family) == ("c-1", CommandAction.GERMINATE, "mlp")
    assert decision.metadata == {}
    bare = AdaptationDecision(**BASE)
    assert (bare.command_id, bare.action, bare.family) == (None, None, None)
    for bad in ({"action": "grow"}, {"command_id": ""}, {"command_id": "c" * 81}, {"family": ""}, {"family": "f" * 51}):
        with pytest.raises(ValidationError):
            AdaptationDecision(**BASE, **bad)
    with pytest.raises(ValidationError):
        bare.action = "explode"  # validated on assignment too


def test_the_action_tells_advance_from_fossilize_where_the_adaptation_type_cannot():
    assert {a: adaptation_type_of(a) for a in CommandAction} == {
        CommandAction.GERMINATE: AdaptationType.ADD_SEED,
        CommandAction.ADVANCE: AdaptationType.MODIFY_ARCHITECTURE,
        CommandAction.FOSSILIZE: AdaptationType.MODIFY_ARCHITECTURE,
        CommandAction.CULL: AdaptationType.REMOVE_SEED,
    }
    assert adaptation_type_of(None) is AdaptationType.NO_OP


def test_a_v1_link_in_metadata_is_read_into_the_typed_fields():
    old = AdaptationDecision(
        **BASE, metadata={"command_id": "c-1", "action": "fossilize", "family": "conv", "why": "x"}
    )
    assert (old.command_id, old.action, old.family) == ("c-1", CommandAction.FOSSILIZE, "conv")
    assert old.metadata == {"why": "x"}
    none = AdaptationDecision(**BASE, metadata={"command_id": "", "action": "", "family": ""})
    assert (none.command_id, none.action, none.family, none.metadata) == (None, None, None, {})


def test_reading_v1_never_rejects_what_v1_accepted():
    # Values the typed fields cannot hold stay in metadata, as v1 stored them.
    odd = {"command_id": "c" * 81, "action": "grow", "family": "f" * 51}
    decision = AdaptationDecision(**BASE, metadata=dict(odd))
    assert (decision.command_id, decision.action, decision.family) == (None, None, None)
    assert decision.metadata == odd
    # A v2 record that sets the typed fields keeps its metadata untouched.
    typed = AdaptationDecision(**BASE, action="cull", metadata={"action": "germinate"})
    assert typed.action is CommandAction.CULL and typed.metadata == {"action": "germinate"}
    # Assigning metadata is today's API: nothing is read out of it.
    typed.metadata = {"command_id": "c-9"}
    assert typed.command_id is None and typed.metadata == {"command_id": "c-9"}


def test_the_v1_fixture_log_decodes_into_the_new_model():
    codec = SingleObjectCodec()
    events = read_fixture_log(fixture_path(RECORD, 1))
    assert events
    for raw in events:
        decision = codec.decode(SPEC, raw).payload
        assert isinstance(decision, AdaptationDecision)
        assert (decision.command_id, decision.action, decision.family) == (None, None, None)
        assert decision.metadata == {"why": "low health"}
    latest = max(v for v, _ in history_versions(SCHEMAS_DIR, RECORD))
    assert latest == SchemaStore().version(RECORD) == 4
    for version in (2, 3):
        for raw in read_fixture_log(fixture_path(RECORD, version)):
            decision = codec.decode(SPEC, raw).payload
            assert (decision.command_id, decision.action, decision.family) == \
                ("c-1", CommandAction.GERMINATE, "bottleneck")
            # v3 names the catalogue the decision was made with; a v2 record names none (replayed with the whole one).
            assert [(p.topic, p.partition, p.offset) for p in decision.catalog_positions] == \
                ([("library.kernels", 0, 12)] if version == 3 else [])


def test_a_v1_decision_off_the_wire_rebuilds_tamiyos_issued_commands():
    codec = SingleObjectCodec()
    raw = v1_decision_bytes(SPEC, decision_id="d-old", epoch=3,
                            metadata={"command_id": "c-old", "action": "germinate", "family": "mlp"})
    decision = codec.decode(SPEC, raw).payload
    assert (decision.command_id, decision.action, decision.family) == ("c-old", CommandAction.GERMINATE, "mlp")
    run = RunState("run-old")
    record(run, decision)
    assert [(i.command_id, i.action, i.layer_id, i.seed_idx, i.epoch) for i in run.issued] == \
        [("c-old", CommandAction.GERMINATE, 7, 0, 3)]
    assert run.germinations(3) == [4]  # a pending germination of ours, as before the upgrade
    noop = codec.decode(
        SPEC,
        v1_decision_bytes(
            SPEC,
            decision_id="d-noop",
            epoch=4,
            adaptation_type=AdaptationType.NO_OP,
            metadata={"command_id": "", "action": "", "family": ""},
        ),
    ).payload
    record(run, noop)
    assert len(run.issued) == 1 and run.decided == {3, 4}


def test_the_original_api_is_kept():
    import contracts
    from contracts import ComponentType, HealthSignal, ModelGraphState, SystemStatePacket

    assert {c.value for c in ComponentType} >= {"tamiyo", "karn", "kasmina", "tolaria", "urza", "oona", "nissa"}
    assert ModelGraphState().overall_health.value == "healthy" and "ModelGraphState" in contracts.__all__
    for helper in (AdaptationDecision.decision_priority, AdaptationDecision.should_execute_immediately,
                   HealthSignal.health_status, SystemStatePacket.system_health):
        assert "original API" in (helper.__doc__ or ""), helper
