"""Avro schema-resolution rules: can a reader schema read what a writer schema wrote?

Esper's schemas evolve FULL_TRANSITIVE (``full_transitive_problems``, run by
``make schemas-check``): for every two versions in ``schemas/history``, the newer reads
what the older wrote (BACKWARD: a rebuilt projection reads the whole log) and the older
reads what the newer wrote (FORWARD: a producer can be upgraded before its consumers, whose
reader schema resolves the new writer schema taken from the schema log). Rules follow the
Avro specification's "Schema Resolution" section, checked on the JSON schemas; the Apache
``avro`` package's ``ReaderWriterCompatibilityChecker`` is the oracle the tests compare with.
"""

from __future__ import annotations

from typing import Any

# (record, older version, newer version) pairs committed before FULL_TRANSITIVE was enforced that
# are only BACKWARD compatible: kept readable by new readers, exempt from FORWARD. Empty: every
# committed pair was FULL compatible when the rule came in; new versions get no entry here.
BACKWARD_ONLY_HISTORY: frozenset[tuple[str, int, int]] = frozenset()


def full_transitive_problems(record_name: str, versions: list[tuple[int, dict[str, Any]]],
                             backward_only: frozenset[tuple[str, int, int]] = BACKWARD_ONLY_HISTORY) -> list[str]:
    """Why ``versions`` (``(version, schema)``, oldest first) are not FULL_TRANSITIVE compatible; empty if they are."""
    problems = []
    for i, (old_version, old) in enumerate(versions):
        for new_version, new in versions[i + 1:]:
            for reason in compatibility_problems(new, old):
                problems.append(f"{record_name} v{new_version} cannot read v{old_version} (BACKWARD): {reason}")
            if (record_name, old_version, new_version) in backward_only:
                continue
            for reason in compatibility_problems(old, new):
                problems.append(f"{record_name} v{old_version} cannot read v{new_version} (FORWARD): {reason}")
    return problems

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def compatibility_problems(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    """Empty when ``reader`` can read all data written with ``writer``; else the reasons."""
    checker = _Checker(_named_types(reader), _named_types(writer))
    checker.check(reader, writer, path=_name(reader) or "<root>")
    return checker.problems


def _name(schema: Any) -> str | None:
    return schema.get("name") if isinstance(schema, dict) else None


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _named_types(schema: Any, table: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    table = {} if table is None else table
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, table)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            table[schema["name"]] = schema
            table.setdefault(_short(schema["name"]), schema)
        if kind == "record":
            for field in schema["fields"]:
                _named_types(field["type"], table)
        elif kind == "array":
            _named_types(schema["items"], table)
        elif kind == "map":
            _named_types(schema["values"], table)
        elif isinstance(kind, (dict, list)):
            _named_types(kind, table)
    return table


class _Checker:
    def __init__(self, reader_names: dict[str, dict[str, Any]], writer_names: dict[str, dict[str, Any]]) -> None:
        self.reader_names = reader_names
        self.writer_names = writer_names
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def _resolve(self, schema: Any, names: dict[str, dict[str, Any]]) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return names[schema]
        if isinstance(schema, dict) and isinstance(schema.get("type"), (str,)) and schema["type"] in _PRIMITIVES:
            return schema["type"]  # {"type": "long", "logicalType": ...} reads as its base type
        if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
            return self._resolve(schema["type"], names)
        return schema

    def check(self, reader: Any, writer: Any, path: str) -> None:
        if not self.matches(reader, writer, path):
            self.problems.append(f"{path}: reader type {_describe(reader)} cannot read writer type {_describe(writer)}")

    def matches(self, reader: Any, writer: Any, path: str) -> bool:
        reader = self._resolve(reader, self.reader_names)
        writer = self._resolve(writer, self.writer_names)
        if isinstance(writer, list):
            for branch in writer:
                if not self._union_has_match(reader, branch, path):
                    self.problems.append(f"{path}: writer union branch {_describe(branch)} has no reader match")
            return True  # each failing branch is already recorded
        if isinstance(reader, list):
            return self._union_has_match(reader, writer, path)
        if isinstance(reader, str) or isinstance(writer, str):
            if isinstance(reader, str) and isinstance(writer, str):
                return reader == writer or reader in _PROMOTIONS.get(writer, set())
            return False
        kind = reader["type"]
        if kind != writer["type"]:
            return False
        if kind == "array":
            self.check(reader["items"], writer["items"], f"{path}[]")
            return True
        if kind == "map":
            self.check(reader["values"], writer["values"], f"{path}{{}}")
            return True
        if _short(reader["name"]) != _short(writer["name"]):
            return False
        if kind == "fixed":
            return bool(reader["size"] == writer["size"])
        if kind == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                self.problems.append(f"{path}: enum {reader['name']} lacks writer symbols {sorted(missing)}")
            return True
        return self._record(reader, writer, path)

    def _union_has_match(self, reader: Any, writer_branch: Any, path: str) -> bool:
        branches = reader if isinstance(reader, list) else [reader]
        for branch in branches:
            probe = _Checker(self.reader_names, self.writer_names)
            probe._seen = set(self._seen)
            if probe.matches(branch, writer_branch, path) and not probe.problems:
                return True
        return False

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> bool:
        key = (reader["name"], writer["name"])
        if key in self._seen:
            return True
        self._seen.add(key)
        # The reader's field name or one of its aliases names the writer's field (writer aliases play no part).
        writer_fields = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            candidates = [field["name"], *field.get("aliases", [])]
            source = next((writer_fields[n] for n in candidates if n in writer_fields), None)
            if source is None:
                if "default" not in field:
                    self.problems.append(
                        f"{path}.{field['name']}: field added without a default; old data has no value for it"
                    )
                continue
            self.check(field["type"], source["type"], f"{path}.{field['name']}")
        return True


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_describe(s) for s in schema) + "]"
    if isinstance(schema, dict):
        return schema.get("name") or str(schema.get("type"))
    return str(schema)
