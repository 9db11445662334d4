"""Schemas are generated from contracts, committed, and BACKWARD_TRANSITIVE compatible."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from services.oona import schema_store
from services.oona.codec import SingleObjectCodec
from services.oona.errors import SchemaDriftError
from services.oona.schema_compat import compatibility_problems
from services.oona.schema_store import DEFAULT_SCHEMAS_DIR, SchemaStore, history_versions
from services.oona.topic_registry import avro_topics
from tests.fixtures.write_fixture_logs import fixture_path, read_fixture_log

RECORDS = [spec.record_name for spec in avro_topics()]


def test_committed_schemas_match_the_contracts(tmp_path):
    # Regenerate into a copy and require that nothing changes.
    copy_dir = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS_DIR, copy_dir)
    assert schema_store.generate(copy_dir) == []
    schema_store.check(DEFAULT_SCHEMAS_DIR)


def test_check_reports_drift(tmp_path):
    copy_dir = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS_DIR, copy_dir)
    target = copy_dir / "HealthSignalMessage.avsc"
    schema = json.loads(target.read_text())
    schema["fields"].pop()
    target.write_text(json.dumps(schema))
    with pytest.raises(SchemaDriftError, match="HealthSignalMessage.avsc differs"):
        schema_store.check(copy_dir)


@pytest.mark.parametrize("record", RECORDS)
def test_current_schema_reads_every_historical_version(record):
    current = json.loads((DEFAULT_SCHEMAS_DIR / f"{record}.avsc").read_text())
    versions = history_versions(DEFAULT_SCHEMAS_DIR, record)
    assert versions, f"{record} has no history"
    for version, old in versions:
        assert compatibility_problems(current, old) == [], f"{record} cannot read v{version}"


@pytest.mark.parametrize("record", RECORDS)
def test_fixture_logs_of_every_version_still_decode(record):
    codec = SingleObjectCodec()
    spec = next(s for s in avro_topics() if s.record_name == record)
    for version, _ in history_versions(DEFAULT_SCHEMAS_DIR, record):
        path = fixture_path(record, version)
        assert path.exists(), f"no fixture log for {record} v{version}; run `make schemas`"
        events = read_fixture_log(path)
        assert len(events) == 3
        for raw in events:
            message = codec.decode(spec, raw)
            assert message.topic == spec.name
            assert message.run_id.startswith("fixture-run-")


def _health_schema() -> dict:
    return json.loads((DEFAULT_SCHEMAS_DIR / "HealthSignalMessage.avsc").read_text())


def _payload_fields(schema: dict) -> list[dict]:
    return next(f for f in schema["fields"] if f["name"] == "payload")["type"]["fields"]


def test_a_field_added_without_a_default_breaks_compatibility():
    old = _health_schema()
    new = copy.deepcopy(old)
    _payload_fields(new).append({"name": "new_metric", "type": "double"})
    problems = compatibility_problems(new, old)
    assert len(problems) == 1 and "new_metric: field added without a default" in problems[0]

    _payload_fields(new)[-1]["default"] = 0.0
    assert compatibility_problems(new, old) == []


def test_type_changes_are_checked_by_avro_promotion_rules():
    old = _health_schema()
    widened, narrowed = copy.deepcopy(old), copy.deepcopy(old)
    old_epoch = next(f for f in _payload_fields(old) if f["name"] == "epoch")
    assert old_epoch["type"] == "long"
    next(f for f in _payload_fields(widened) if f["name"] == "epoch")["type"] = "double"  # long -> double: promotable
    next(f for f in _payload_fields(narrowed) if f["name"] == "health_score")["type"] = "long"  # double -> long: not
    assert compatibility_problems(widened, old) == []
    assert any("health_score" in p for p in compatibility_problems(narrowed, old))


def test_removing_an_enum_symbol_breaks_compatibility():
    old = json.loads((DEFAULT_SCHEMAS_DIR / "SeedTransitionMessage.avsc").read_text())
    new = copy.deepcopy(old)
    enum = next(f for f in _payload_fields(new) if f["name"] == "from_state")["type"]
    enum["symbols"].remove("culled")
    assert any("lacks writer symbols ['culled']" in p for p in compatibility_problems(new, old))


def test_history_holds_the_current_version():
    store = SchemaStore()
    for record in RECORDS:
        versions = history_versions(DEFAULT_SCHEMAS_DIR, record)
        assert store.version(record) == versions[-1][0]
