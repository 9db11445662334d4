"""A fast Avro binary encoder specialised once per schema.

fastavro is the reference implementation and does all decoding, but its per-call
overhead (~20 us for one HealthSignal) is too high for bulk telemetry. This module
turns one of *our own committed* schemas into straight-line Python (one function
per record type) that reads attributes off the pydantic objects and packs runs of
fixed-width fields with one ``struct`` call. Only identifiers validated against
Avro's name rule are spliced into the source; every other value (enum tables,
constants) is passed through the function's namespace, never as text. Nothing
read from the bus ever reaches this module. A unit test proves the bytes equal
fastavro's for every contract.
"""

from __future__ import annotations

import keyword
import re
import struct
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from services.oona.errors import SchemaError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SMALL_LONGS = [bytes([z]) for z in range(128)]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIXED = {"double": "d", "float": "f", "boolean": "?"}


def encode_long(n: int) -> bytes:
    """Zig-zag varint, as Avro encodes int and long."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _SMALL_LONGS[z]
    if z < 0x4000:
        return bytes((z & 0x7F | 0x80, z >> 7))
    out = _LONG_CACHE.get(z)
    if out is None:
        buf = bytearray()
        while z > 0x7F:
            buf.append(z & 0x7F | 0x80)
            z >>= 7
        buf.append(z)
        out = bytes(buf)
        if len(_LONG_CACHE) >= _CACHE_MAX:
            _LONG_CACHE.clear()
        _LONG_CACHE[(n << 1) ^ (n >> 63)] = out
    return out


# Large longs (layer ids, the shared timestamp of an epoch's telemetry batch) and
# envelope strings (sender, topic, run id, layer names) repeat from event to event.
# The caches are bounded and simply cleared when full, so unique values cannot grow them.
_CACHE_MAX = 4096
_LONG_CACHE: dict[int, bytes] = {}
_STRING_CACHE: dict[str, bytes] = {}


def encode_string(v: str) -> bytes:
    out = _STRING_CACHE.get(v)
    if out is None:
        raw = v.encode("utf-8")
        out = (_SMALL_LONGS[len(raw) << 1] if len(raw) < 64 else encode_long(len(raw))) + raw
        if len(_STRING_CACHE) >= _CACHE_MAX:
            _STRING_CACHE.clear()
        if len(raw) <= 256:
            _STRING_CACHE[v] = out
    return out


def encode_bytes(v: bytes) -> bytes:
    return encode_long(len(v)) + bytes(v)


def timestamp_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def compile_encoder(schema: dict, constants: dict[str, Any] | None = None) -> Callable[[Any], bytes]:
    """``encode(obj) -> bytes`` for a record schema; ``obj`` exposes fields as attributes.

    ``constants`` replaces top-level field values (e.g. the envelope's schema_version).
    """
    gen = _Generator()
    top = gen.record_function(schema, constants or {})
    namespace: dict[str, Any] = {
        "_L": encode_long,
        "_S": encode_string,
        "_B": encode_bytes,
        "_T": timestamp_micros,
        **gen.namespace,
    }
    source = "\n".join(gen.functions) + f"\ndef encode(o):\n    out = []\n    {top}(o, out.append)\n    return b''.join(out)\n"
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - see module doc
    return namespace["encode"]


class _Generator:
    def __init__(self) -> None:
        self.functions: list[str] = []
        self.namespace: dict[str, Any] = {}
        self._records: dict[str, str] = {}
        self._counter = 0

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def record_function(self, schema: dict, constants: dict[str, Any]) -> str:
        name = schema["name"]
        if name in self._records and not constants:
            return self._records[name]
        fn = self._fresh("_w")
        if not constants:
            self._records[name] = fn
        body: list[str] = []
        pending: list[tuple[str, str]] = []  # run of fixed-width fields: (struct code, expr)

        def flush() -> None:
            if pending:
                packer = self._fresh("_P")
                self.namespace[packer] = struct.Struct("<" + "".join(code for code, _ in pending)).pack
                body.append(f"a({packer}({', '.join(expr for _, expr in pending)}))")
                pending.clear()

        for field in schema["fields"]:
            fname = field["name"]
            if not _NAME.match(fname) or keyword.iskeyword(fname):
                raise SchemaError(f"field name {fname!r} is not a safe identifier")
            if fname in constants:
                const = self._fresh("_C")
                self.namespace[const] = constants[fname]
                expr = const
            else:
                expr = f"o.{fname}"
            code = _fixed_code(field["type"])
            if code:
                pending.append((code, expr))
                continue
            flush()
            body.extend(self.value(field["type"], expr))
        flush()
        lines = [f"def {fn}(o, a):"] + ["    " + line for line in body or ["pass"]]
        self.functions.append("\n".join(lines))
        return fn

    def value(self, schema: Any, expr: str) -> list[str]:
        if isinstance(schema, list):
            return self.union(schema, expr)
        if isinstance(schema, str):
            if schema in self._records:
                return [f"{self._records[schema]}({expr}, a)"]
            return self.primitive(schema, expr)
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            return self.value(kind, expr)
        if kind == "long" and schema.get("logicalType") == "timestamp-micros":
            return [f"a(_L(_T({expr})))"]
        if kind == "record":
            return [f"{self.record_function(schema, {})}({expr}, a)"]
        if kind == "enum":
            table = self._fresh("_E")
            self.namespace[table] = {symbol: encode_long(i) for i, symbol in enumerate(schema["symbols"])}
            self._records[schema["name"]] = self._enum_function(table)
            return [f"a({table}[{expr}])"]
        if kind == "array":
            var, item = self._fresh("v"), self._fresh("i")
            inner = self.value(schema["items"], item)
            return [
                f"{var} = {expr}",
                f"if {var}:",
                f"    a(_L(len({var})))",
                f"    for {item} in {var}:",
                *("        " + line for line in inner),
                "a(b'\\x00')",
            ]
        if kind == "map":
            var, key, item = self._fresh("v"), self._fresh("k"), self._fresh("i")
            inner = self.value(schema["values"], item)
            return [
                f"{var} = {expr}",
                f"if {var}:",
                f"    a(_L(len({var})))",
                f"    for {key}, {item} in {var}.items():",
                f"        a(_S({key}))",
                *("        " + line for line in inner),
                "a(b'\\x00')",
            ]
        return self.primitive(kind, expr)

    def _enum_function(self, table: str) -> str:
        fn = self._fresh("_w")
        self.functions.append(f"def {fn}(o, a):\n    a({table}[o])")
        return fn

    def primitive(self, kind: str, expr: str) -> list[str]:
        if kind in ("int", "long"):
            return [f"a(_L({expr}))"]
        if kind == "string":
            return [f"a(_S({expr}))"]
        if kind == "bytes":
            return [f"a(_B({expr}))"]
        if kind == "null":
            return []
        if kind in _FIXED:
            packer = self._fresh("_P")
            self.namespace[packer] = struct.Struct("<" + _FIXED[kind]).pack
            return [f"a({packer}({expr}))"]
        raise SchemaError(f"fast encoder does not support Avro type {kind!r}")

    def union(self, branches: list, expr: str) -> list[str]:
        non_null = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(non_null) != 1:
            raise SchemaError(f"fast encoder supports only [null, X] unions, got {branches}")
        null_at = branches.index("null")
        var = self._fresh("v")
        inner = self.value(non_null[0], var) or ["pass"]
        return [
            f"{var} = {expr}",
            f"if {var} is None:",
            f"    a({encode_long(null_at)!r})",
            "else:",
            f"    a({encode_long(1 - null_at)!r})",
            *("    " + line for line in inner),
        ]


def _fixed_code(schema: Any) -> str | None:
    if isinstance(schema, str):
        return _FIXED.get(schema)
    if isinstance(schema, dict) and isinstance(schema.get("type"), str) and not schema.get("logicalType"):
        return _FIXED.get(schema["type"])
    return None
