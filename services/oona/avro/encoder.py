"""A fast Avro binary encoder specialised once per schema.

fastavro is the reference implementation (the services decode with it, after this
layer's validator), but its per-call overhead (~20 us for one HealthSignal) is too high
for bulk telemetry. This module turns one of *our own committed* schemas into
straight-line Python (one function per record type) that reads attributes off the
pydantic objects and packs runs of fixed-width fields with one ``struct`` call. Only identifiers validated against
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
from datetime import UTC, datetime
from typing import Any

from services.core.errors import SchemaError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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


_TIMESTAMP_CACHE: dict[datetime, bytes] = {}


def encode_timestamp(value: datetime) -> bytes:
    """timestamp-micros as a varint; events of one epoch share their timestamp, hence the cache."""
    out = _TIMESTAMP_CACHE.get(value)
    if out is None:
        out = encode_long(timestamp_micros(value))
        if len(_TIMESTAMP_CACHE) >= _CACHE_MAX:
            _TIMESTAMP_CACHE.clear()
        _TIMESTAMP_CACHE[value] = out
    return out


def _encode_array(items: Any, encode_item: Callable[[Any], bytes]) -> bytes:
    if not items:
        return b"\x00"
    return b"".join((encode_long(len(items)), *map(encode_item, items), b"\x00"))


def _encode_map(items: Any, encode_value: Callable[[Any], bytes]) -> bytes:
    if not items:
        return b"\x00"
    parts = [encode_long(len(items))]
    for key, value in items.items():
        parts.append(encode_string(key))
        parts.append(encode_value(value))
    parts.append(b"\x00")
    return b"".join(parts)


def compile_encoder(
    schema: dict[str, Any], constants: dict[str, Any] | None = None, prefix: bytes = b""
) -> Callable[[Any], bytes]:
    """``encode(obj) -> bytes`` for a record schema; ``obj`` exposes fields as attributes.

    ``constants`` replaces top-level field values (e.g. the envelope's schema_version);
    ``prefix`` is written before the body (e.g. the single-object header).
    """
    gen = _Generator()
    top = gen.record_function(schema, constants or {}, prefix)
    namespace: dict[str, Any] = {
        "_L": encode_long,
        "_S": encode_string,
        "_B": encode_bytes,
        "_TS": encode_timestamp,
        "_ARR": _encode_array,
        "_MAP": _encode_map,
        **gen.namespace,
    }
    source = "\n".join(gen.functions)
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - see module doc
    encode: Callable[[Any], bytes] = namespace[top]
    return encode


class _Generator:
    """Emits one function per record: ``def _wN(o): return b"".join((<field expressions>))``."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.namespace: dict[str, Any] = {}
        self._named: dict[str, str] = {}  # Avro full name -> function encoding one value of it
        self._counter = 0

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _constant(self, value: Any) -> str:
        name = self._fresh("_C")
        self.namespace[name] = value
        return name

    def record_function(self, schema: dict[str, Any], constants: dict[str, Any], prefix: bytes = b"") -> str:
        name = schema["name"]
        top_level = bool(constants or prefix)
        if name in self._named and not top_level:
            return self._named[name]
        fn = self._fresh("_w")
        if not top_level:
            self._named[name] = fn  # registered before the fields: recursive types resolve
        parts: list[str] = [self._constant(prefix)] if prefix else []
        pending: list[tuple[str, str]] = []  # run of fixed-width fields: (struct code, expression)

        def flush() -> None:
            if pending:
                packer = self._constant(struct.Struct("<" + "".join(code for code, _ in pending)).pack)
                parts.append(f"{packer}({', '.join(expr for _, expr in pending)})")
                pending.clear()

        for field in schema["fields"]:
            fname = field["name"]
            if not _NAME.match(fname) or keyword.iskeyword(fname):
                raise SchemaError(f"field name {fname!r} is not a safe identifier")
            if fname in constants:
                flush()
                parts.append(self._constant(_encode_constant(field["type"], constants[fname])))
                continue
            expr = f"o.{fname}"
            code = _fixed_code(field["type"])
            if code:
                pending.append((code, expr))
                continue
            flush()
            parts.append(self.value(field["type"], expr))
        flush()
        body = ", ".join(parts) + ("," if len(parts) == 1 else "")
        self.functions.append(f"def {fn}(o):\n    return b''.join(({body}))")
        return fn

    def _value_function(self, schema: Any) -> str:
        """A generated function encoding one value of ``schema`` (for array items, map values)."""
        fn = self._fresh("_v")
        self.functions.append(f"def {fn}(o):\n    return {self.value(schema, 'o')}")
        return fn

    def value(self, schema: Any, expr: str) -> str:
        """A Python expression producing the bytes of ``expr`` encoded as ``schema``."""
        if isinstance(schema, list):
            return self.union(schema, expr)
        if isinstance(schema, str):
            if schema in self._named:
                return f"{self._named[schema]}({expr})"
            return self.primitive(schema, expr)
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            return self.value(kind, expr)
        if kind == "long" and schema.get("logicalType") == "timestamp-micros":
            return f"_TS({expr})"
        if kind == "record":
            return f"{self.record_function(schema, {})}({expr})"
        if kind == "enum":
            table = self._constant({symbol: encode_long(i) for i, symbol in enumerate(schema["symbols"])})
            fn = self._fresh("_w")
            self.functions.append(f"def {fn}(o):\n    return {table}[o]")
            self._named[schema["name"]] = fn
            return f"{table}[{expr}]"
        if kind == "array":
            return f"_ARR({expr}, {self._value_function(schema['items'])})"
        if kind == "map":
            return f"_MAP({expr}, {self._value_function(schema['values'])})"
        return self.primitive(kind, expr)

    def primitive(self, kind: str, expr: str) -> str:
        if kind in ("int", "long"):
            return f"_L({expr})"
        if kind == "string":
            return f"_S({expr})"
        if kind == "bytes":
            return f"_B({expr})"
        if kind == "null":
            return "b''"
        if kind in _FIXED:
            return f"{self._constant(struct.Struct('<' + _FIXED[kind]).pack)}({expr})"
        raise SchemaError(f"fast encoder does not support Avro type {kind!r}")

    def union(self, branches: list[Any], expr: str) -> str:
        non_null = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(non_null) != 1:
            raise SchemaError(f"fast encoder supports only [null, X] unions, got {branches}")
        null_at = branches.index("null")
        var = self._fresh("v")
        inner = self.value(non_null[0], var)
        return (f"({encode_long(null_at)!r} if ({var} := {expr}) is None "
                f"else {encode_long(1 - null_at)!r} + {inner})")


def _encode_constant(schema: Any, value: Any) -> bytes:
    kind = schema if isinstance(schema, str) else schema.get("type")
    if kind in ("int", "long"):
        return encode_long(value)
    if kind == "string":
        return encode_string(value)
    raise SchemaError(f"constants must be long or string fields, not {kind!r}")


def _fixed_code(schema: Any) -> str | None:
    if isinstance(schema, str):
        return _FIXED.get(schema)
    if isinstance(schema, dict) and isinstance(schema.get("type"), str) and not schema.get("logicalType"):
        return _FIXED.get(schema["type"])
    return None
