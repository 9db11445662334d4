"""Avro schema-resolution rules: can a reader schema read what a writer schema wrote?

BACKWARD_TRANSITIVE for Esper means: the current schema of a record can read data
written with every version in ``schemas/history``. Rules follow the Avro
specification's "Schema Resolution" section, checked on the JSON schemas.
"""

from __future__ import annotations

from typing import Any

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def compatibility_problems(reader: dict, writer: dict) -> list[str]:
    """Empty when ``reader`` can read all data written with ``writer``; else the reasons."""
    checker = _Checker(_named_types(reader), _named_types(writer))
    checker.check(reader, writer, path=_name(reader) or "<root>")
    return checker.problems


def _name(schema: Any) -> str | None:
    return schema.get("name") if isinstance(schema, dict) else None


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _named_types(schema: Any, table: dict[str, dict] | None = None) -> dict[str, dict]:
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
    def __init__(self, reader_names: dict[str, dict], writer_names: dict[str, dict]) -> None:
        self.reader_names = reader_names
        self.writer_names = writer_names
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def _resolve(self, schema: Any, names: dict[str, dict]) -> Any:
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
            return reader["size"] == writer["size"]
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

    def _record(self, reader: dict, writer: dict, path: str) -> bool:
        key = (reader["name"], writer["name"])
        if key in self._seen:
            return True
        self._seen.add(key)
        writer_fields = {}
        for field in writer["fields"]:
            writer_fields[field["name"]] = field
            for alias in field.get("aliases", []):
                writer_fields[alias] = field
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
