"""Schemas are generated from contracts, committed, and FULL_TRANSITIVE compatible.

Our checker (``schema_compat``) is compared with the Apache ``avro`` package's
``ReaderWriterCompatibilityChecker`` on every pair of committed versions and on crafted pairs.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil

import avro.compatibility
import avro.schema
import pytest

from services.core.errors import SchemaCompatibilityError, SchemaDriftError
from services.core.paths import SCHEMAS_DIR
from services.oona import schema_store
from services.oona.codec import SingleObjectCodec
from services.oona.schema_compat import BACKWARD_ONLY_HISTORY, compatibility_problems, full_transitive_problems
from services.oona.schema_store import SchemaStore, history_versions
from services.oona.topic_registry import avro_topics
from tests.fixtures.schema_ahead import next_health_schema, schemas_one_version_ahead
from tests.fixtures.write_fixture_logs import fixture_path, read_fixture_log

RECORDS = [spec.record_name for spec in avro_topics()]


def test_committed_schemas_match_the_contracts(tmp_path):
    # Regenerate into a copy and require that nothing changes.
    copy_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, copy_dir)
    assert schema_store.generate(copy_dir) == []
    schema_store.check(SCHEMAS_DIR)


def test_check_reports_drift(tmp_path):
    copy_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, copy_dir)
    target = copy_dir / "HealthSignalMessage.avsc"
    schema = json.loads(target.read_text())
    schema["fields"].pop()
    target.write_text(json.dumps(schema))
    with pytest.raises(SchemaDriftError, match="HealthSignalMessage.avsc differs"):
        schema_store.check(copy_dir)


@pytest.mark.parametrize("record", RECORDS)
def test_current_schema_reads_every_historical_version(record):
    current = json.loads((SCHEMAS_DIR / f"{record}.avsc").read_text())
    versions = history_versions(SCHEMAS_DIR, record)
    assert versions, f"{record} has no history"
    for version, old in versions:
        assert compatibility_problems(current, old) == [], f"{record} cannot read v{version}"


@pytest.mark.parametrize("record", RECORDS)
def test_fixture_logs_of_every_version_still_decode(record):
    codec = SingleObjectCodec()
    spec = next(s for s in avro_topics() if s.record_name == record)
    for version, _ in history_versions(SCHEMAS_DIR, record):
        path = fixture_path(record, version)
        assert path.exists(), f"no fixture log for {record} v{version}; run `make schemas`"
        events = read_fixture_log(path)
        assert len(events) == 3
        for raw in events:
            message = codec.decode(spec, raw)
            assert message.topic == spec.name
            assert message.run_id.startswith("fixture-run-")


def _health_schema() -> dict:
    return json.loads((SCHEMAS_DIR / "HealthSignalMessage.avsc").read_text())


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
    old = json.loads((SCHEMAS_DIR / "SeedTransitionMessage.avsc").read_text())
    new = copy.deepcopy(old)
    enum = next(f for f in _payload_fields(new) if f["name"] == "from_state")["type"]
    enum["symbols"].remove("culled")
    assert any("lacks writer symbols ['culled']" in p for p in compatibility_problems(new, old))


def test_history_holds_the_current_version():
    store = SchemaStore()
    for record in RECORDS:
        versions = history_versions(SCHEMAS_DIR, record)
        assert store.version(record) == versions[-1][0]


# -- FULL_TRANSITIVE, with the Apache avro package as the oracle ---------------------------------------
_ORACLE = avro.compatibility.ReaderWriterCompatibilityChecker()


def avro_says_compatible(reader: dict, writer: dict) -> bool:
    result = _ORACLE.get_compatibility(reader=avro.schema.parse(json.dumps(reader)),
                                       writer=avro.schema.parse(json.dumps(writer)))
    return result.compatibility == avro.compatibility.SchemaCompatibilityType.compatible


@pytest.mark.parametrize("record", RECORDS)
def test_every_pair_of_committed_versions_is_full_compatible_and_avro_agrees(record):
    versions = history_versions(SCHEMAS_DIR, record)
    for (i, reader), (j, writer) in itertools.product(versions, repeat=2):
        ours = compatibility_problems(reader, writer)
        assert (ours == []) == avro_says_compatible(reader, writer), f"{record} reader v{i} writer v{j}: {ours}"
        assert ours == [], f"{record} v{i} cannot read v{j}: {ours}"
    assert full_transitive_problems(record, versions) == []
    assert not BACKWARD_ONLY_HISTORY  # no committed pair needed an exemption


def _mutate(schema_file: str, change) -> tuple[dict, dict]:
    old = json.loads((SCHEMAS_DIR / schema_file).read_text())
    new = copy.deepcopy(old)
    change(_payload_fields(new))
    return old, new


def _field(fields, name):
    return next(f for f in fields if f["name"] == name)


CRAFTED = {
    "field added without a default": ("HealthSignalMessage.avsc",
                                      lambda f: f.append({"name": "new_metric", "type": "double"})),
    "field without a default dropped": ("HealthSignalMessage.avsc",
                                        lambda f: f.remove(_field(f, "epoch"))),
    "type changed double -> string": ("HealthSignalMessage.avsc",
                                      lambda f: _field(f, "health_score").update(type="string", default="1")),
    "type widened long -> double": ("HealthSignalMessage.avsc", lambda f: _field(f, "epoch").update(type="double")),
    "enum symbol removed": ("SeedTransitionMessage.avsc",
                            lambda f: _field(f, "from_state")["type"]["symbols"].remove("culled")),
    "enum symbol added": ("SeedTransitionMessage.avsc",
                          lambda f: _field(f, "from_state")["type"]["symbols"].append("resting")),
    "field added with a default": ("HealthSignalMessage.avsc",
                               lambda f: f.append({"name": "note", "type": "string", "default": ""})),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_our_checker_agrees_with_avro_on_crafted_pairs(case):
    schema_file, change = CRAFTED[case]
    old, new = _mutate(schema_file, change)
    for reader, writer in ((new, old), (old, new)):
        ours = compatibility_problems(reader, writer)
        assert (ours == []) == avro_says_compatible(reader, writer), f"{case}: ours={ours}"


@pytest.mark.parametrize("case", [c for c in sorted(CRAFTED) if c != "field added with a default"])
def test_a_change_that_is_not_full_compatible_fails_the_check(case):
    schema_file, change = CRAFTED[case]
    old, new = _mutate(schema_file, change)
    problems = full_transitive_problems("R", [(1, old), (2, new)])
    assert problems, case
    assert not avro_says_compatible(new, old) or not avro_says_compatible(old, new)


def test_a_field_added_with_a_default_and_an_optional_one_dropped_is_full_compatible(tmp_path):
    old = json.loads((SCHEMAS_DIR / "HealthSignalMessage.avsc").read_text())
    new = next_health_schema()
    assert avro_says_compatible(new, old) and avro_says_compatible(old, new)
    assert full_transitive_problems("HealthSignalMessage", [(1, old), (2, new)]) == []
    schema_store.check_compatibility(schemas_one_version_ahead(tmp_path / "schemas"))


def test_schemas_check_refuses_a_new_version_old_readers_cannot_read(tmp_path):
    # FORWARD only: the new version drops a field that v1 readers need (it has no default there).
    new = next_health_schema(lambda fields: fields.remove(_field(fields, "epoch")))
    assert compatibility_problems(new, json.loads((SCHEMAS_DIR / "HealthSignalMessage.avsc").read_text())) == []
    with pytest.raises(SchemaCompatibilityError, match=r"HealthSignalMessage v1 cannot read v\d+ \(FORWARD\).*epoch"):
        schema_store.check_compatibility(schemas_one_version_ahead(tmp_path / "schemas", new))
