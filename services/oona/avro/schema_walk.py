"""Walking our committed Avro schemas: named types, ``[null, X]`` unions, flattened records.

Pure schema logic shared by the code generators here and by Nissa's table derivation. Only
names that match Avro's identifier rule are ever used (they end up in generated code and SQL).
"""

from __future__ import annotations

import re
from typing import Any

from services.core.errors import SchemaError

PRIMITIVE_NAMES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def safe_name(name: str) -> str:
    if not _NAME.match(name):
        raise SchemaError(f"name {name!r} is not a safe SQL identifier")
    return name


class NamedTypes:
    """Every Avro named type defined in one schema (defined once, then referenced by name)."""

    def __init__(self, schema: Any = None) -> None:
        self._types: dict[str, dict[str, Any]] = {}
        self._register(schema)

    def _register(self, schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._register(branch)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in ("record", "enum", "fixed"):
                self._types.setdefault(schema["name"], schema)
            if kind == "record":
                for field in schema["fields"]:
                    self._register(field["type"])
            elif kind == "array":
                self._register(schema["items"])
            elif kind == "map":
                self._register(schema["values"])
            elif isinstance(kind, (dict, list)):
                self._register(kind)

    def resolve(self, schema: Any) -> Any:
        """``schema`` with a reference to a named type replaced by its definition."""
        if isinstance(schema, str) and schema not in PRIMITIVE_NAMES:
            try:
                return self._types[schema]
            except KeyError:
                raise SchemaError(f"unknown Avro type {schema!r}") from None
        if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
            return self.resolve(schema["type"])
        return schema


def nullable_branch(schema: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``[null, X]`` / ``[X, null]``, ``(schema, False)`` otherwise."""
    if isinstance(schema, list):
        others = [b for b in schema if b != "null"]
        if len(schema) != 2 or len(others) != 1:
            raise SchemaError(f"only [null, X] unions are supported, got {schema}")
        return others[0], True
    return schema, False


def union_codes(union: list[Any]) -> tuple[int, int]:
    """The bytes a ``[null, X]`` union's branch index is on the wire: (null's, X's).

    Indexes 0 and 1 are the one-byte zig-zag varints 0x00 and 0x02; the decoders read the
    branch as one byte, so an over-long encoding of the index is rejected (never produced).
    """
    null_at = union.index("null")
    return null_at * 2, (1 - null_at) * 2


def flattened_record(schema: Any, names: NamedTypes) -> dict[str, Any] | None:
    """The record definition when ``schema`` is a record or ``[null, record]`` (flattened into columns)."""
    inner, _ = nullable_branch(schema)
    inner = names.resolve(inner)
    return inner if isinstance(inner, dict) and inner.get("type") == "record" else None
