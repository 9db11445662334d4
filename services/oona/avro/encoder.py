"""A fast Avro binary encoder specialised once per schema.

fastavro is the reference implementation (the services decode with it, after this
layer's validator), but its per-call overhead (~20 us for one HealthSignal) is too high
for bulk telemetry. This module turns one of *our own committed* schemas into
straight-line Python: one function per record type that reads the fields straight out of
the object's ``__dict__`` (a pydantic model's attribute lookup goes through its
``__getattr__`` hook; its ``__dict__`` is a plain dict), inlines nested records into the
one ``b"".join`` of their parent, and packs runs of fixed-width fields with one ``struct``
call. Values that repeat from event to event (small ints, layer names, an epoch's shared
timestamp) are looked up in bounded memos (dicts that encode on a miss and are simply
cleared when full); the top-level fields between the per-event ones (an envelope's
sender, timestamp, trace, topic and run) are looked up together, keyed by the tuple of
their values. Fields named ``per_event`` (the event id) are never remembered: they differ
in every event and would only evict the rest.

Only identifiers validated against Avro's name rule are spliced into the source; every
other value (enum tables, constants, memos) is passed through the function's namespace,
never as text. Nothing read from the bus ever reaches this module. Unit and property
tests prove the bytes equal fastavro's for every contract and for random values of every
schema.
"""

from __future__ import annotations

import keyword
import re
import struct
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from services.core.errors import SchemaError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SMALL_LONGS = [bytes([z]) for z in range(128)]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIXED = {"double": "d", "float": "f", "boolean": "?"}
# A memo holds at most this many values, each at most this long when encoded.
_MEMO_MAX = 4096
_MEMO_MAX_BYTES = 264


def encode_long(n: int) -> bytes:
    """Zig-zag varint, as Avro encodes int and long."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _SMALL_LONGS[z]
    buf = bytearray()
    while z > 0x7F:
        buf.append(z & 0x7F | 0x80)
        z >>= 7
    buf.append(z)
    return bytes(buf)


def encode_string(v: str) -> bytes:
    raw = v.encode("utf-8")
    return encode_long(len(raw)) + raw


def encode_bytes(v: bytes) -> bytes:
    return encode_long(len(v)) + bytes(v)


def timestamp_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_timestamp(value: datetime) -> bytes:
    """timestamp-micros as a varint."""
    return encode_long(timestamp_micros(value))


class _Memo(dict[Any, bytes]):
    """value -> its encoding; a miss encodes (``encode``) and remembers, and a full memo is cleared.

    A hit is one C-level dict lookup, no Python call. Values that compare equal encode alike
    for the types memoised here (an ``int`` and its ``bool``, a ``str`` and its ``str`` enum
    member, one instant in two time zones); floats are never memoised (``0.0 == -0.0``).
    """

    __slots__ = ("_encode",)

    def __init__(self, encode: Callable[[Any], bytes]) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, value: Any) -> bytes:
        out = self._encode(value)
        if len(out) <= _MEMO_MAX_BYTES:
            if len(self) >= _MEMO_MAX:
                self.clear()
            self[value] = out
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
    schema: dict[str, Any], constants: dict[str, Any] | None = None, prefix: bytes = b"",
    per_event: Collection[str] = (),
) -> Callable[[Any], bytes]:
    """``encode(obj) -> bytes`` for a record schema; ``obj`` keeps its fields in ``__dict__`` (a pydantic model).

    ``constants`` replaces top-level field values (e.g. the envelope's schema_version);
    ``prefix`` is written before the body (e.g. the single-object header); ``per_event``
    names top-level string fields whose values differ in every event (never memoised).
    """
    gen = _Generator()
    top = gen.top_function(schema, constants or {}, prefix, frozenset(per_event))
    namespace = gen.namespace
    namespace.update({"_B": encode_bytes, "_ARR": _encode_array, "_MAP": _encode_map,
                      "_MEMO": _Memo, "_NULLABLE": _NullableEncoder})
    source = "\n".join(gen.functions)
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - see module doc
    encode: Callable[[Any], bytes] = namespace[top]
    return encode


# One part of a record's bytes: (struct code, expression) for a fixed-width field, (None, expression) otherwise.
_Part = tuple[str | None, str]


class _Generator:
    """Emits one function per record: ``def _wN(o): d1 = o.__dict__ ... return b"".join((<parts>))``."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.namespace: dict[str, Any] = {}
        self._named: dict[str, str] = {}  # Avro full name -> function encoding one value of it
        self._memos: dict[str, str] = {}  # kind -> the namespace name of its memo
        self._enum_tables: dict[str, str] = {}  # enum full name -> namespace name of symbol -> bytes
        self._counter = 0

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _constant(self, value: Any) -> str:
        name = self._fresh("_C")
        self.namespace[name] = value
        return name

    # -- records -------------------------------------------------------------------------------
    def top_function(self, schema: dict[str, Any], constants: dict[str, Any], prefix: bytes,
                     per_event: frozenset[str]) -> str:
        """The function encoding the top-level record: ``prefix``, then its fields (see the module doc)."""
        fn = self._fresh("_w")
        lines: list[str] = []
        parts: list[_Part] = [(None, self._constant(prefix))] if prefix else []
        self._fields(schema, "o", lines, parts, constants, per_event)
        self._emit(fn, lines, parts)
        return fn

    def record_function(self, schema: dict[str, Any]) -> str:
        """The function encoding one value of a nested record type (defined once, then called by name)."""
        name = schema["name"]
        if name in self._named:
            return self._named[name]
        fn = self._named[name] = self._fresh("_w")  # registered before the fields: recursive types resolve
        lines: list[str] = []
        parts: list[_Part] = []
        self._fields(schema, "o", lines, parts, {}, None)
        self._emit(fn, lines, parts)
        return fn

    def _emit(self, fn: str, lines: list[str], parts: list[_Part]) -> None:
        exprs: list[str] = []
        fixed: list[_Part] = []  # run of fixed-width fields, packed with one Struct
        for code, expr in [*parts, (None, "")]:
            if code is not None:
                fixed.append((code, expr))
                continue
            if fixed:
                packer = self._constant(struct.Struct("<" + "".join(c or "" for c, _ in fixed)).pack)
                exprs.append(f"{packer}({', '.join(e for _, e in fixed)})")
                fixed.clear()
            if expr:
                exprs.append(expr)
        body = "".join(f"    {line}\n" for line in lines)
        self.functions.append(f"def {fn}(o):\n{body}    return b''.join(({', '.join(exprs)},))")

    def _fields(self, schema: dict[str, Any], obj: str, lines: list[str], parts: list[_Part],
                constants: dict[str, Any], per_event: frozenset[str] | None) -> None:
        """Append the statements and parts encoding ``schema``'s fields of ``obj``; nested records inline.

        ``per_event`` is None below the top level; at the top level, runs of memoisable fields
        (and constants) between the per-event ones are looked up together (``_group``).
        """
        d = self._fresh("d")
        lines.append(f"{d} = {obj}.__dict__")
        fields = schema["fields"]
        for field in fields:
            if not _NAME.match(field["name"]) or keyword.iskeyword(field["name"]):
                raise SchemaError(f"field name {field['name']!r} is not a safe identifier")
        i = 0
        while i < len(fields):
            field = fields[i]
            fname, ftype = field["name"], field["type"]
            expr = f"{d}[{fname!r}]"
            if per_event is not None:
                run = i
                while run < len(fields) and (fields[run]["name"] in constants or (
                        fields[run]["name"] not in per_event and self._memo_kind(fields[run]["type"]))):
                    run += 1
                if sum(f["name"] not in constants for f in fields[i:run]) >= 2:
                    parts.append((None, self._group(fields[i:run], d, constants)))
                    i = run
                    continue
            i += 1
            if fname in constants:
                parts.append((None, self._constant(_encode_constant(ftype, constants[fname]))))
            elif per_event and fname in per_event and self._resolved(ftype) == "string":
                raw = self._fresh("v")
                parts.append((None, f"{self._memo('long')}[len({raw} := {expr}.encode('utf-8'))]"))
                parts.append((None, raw))
            elif code := _fixed_code(ftype):
                parts.append((code, expr))
            elif (inner := _record_definition(ftype)) is not None:
                self.record_function(inner)  # defined here: later references by name call it
                self._fields(inner, expr, lines, parts, {}, None)
            else:
                parts.append((None, self.value(ftype, expr)))

    def _group(self, fields: list[dict[str, Any]], d: str, constants: dict[str, Any]) -> str:
        """One memo lookup for a run of fields, keyed by the tuple of their values (constants written as they are)."""
        key: list[str] = []
        exprs: list[str] = []
        for field in fields:
            if field["name"] in constants:
                exprs.append(self._constant(_encode_constant(field["type"], constants[field["name"]])))
            else:
                exprs.append(self.value(field["type"], f"k[{len(key)}]"))
                key.append(f"{d}[{field['name']!r}]")
        fn = self._fresh("_g")
        self.functions.append(f"def {fn}(k):\n    return b''.join(({', '.join(exprs)},))")
        memo = self._fresh("_G")
        self.functions.append(f"{memo} = _MEMO({fn})")
        return f"{memo}[({', '.join(key)},)]"

    # -- values ----------------------------------------------------------------------------------
    def _resolved(self, schema: Any) -> Any:
        """``schema`` with a named reference resolved to its kind where known; dict wrappers unwrapped."""
        if not isinstance(schema, dict):
            return schema
        kind, logical = schema.get("type"), schema.get("logicalType")
        if isinstance(kind, (dict, list)):
            return self._resolved(kind)
        if kind == "long" and logical == "timestamp-micros":
            return "timestamp"
        if kind in ("string", "long", "int") and not logical:
            return kind
        return schema

    def _memo_kind(self, schema: Any) -> str | None:
        """The memo a value of ``schema`` is looked up in, when it has one (None: not memoisable)."""
        resolved = self._resolved(schema)
        if resolved in ("int", "long"):
            return "long"
        if resolved == "string" or resolved == "timestamp":
            return str(resolved)
        if isinstance(resolved, dict) and resolved.get("type") == "enum":
            return f"enum {resolved['name']}"
        if isinstance(resolved, str) and resolved in self._enum_tables:
            return f"enum {resolved}"
        if isinstance(resolved, list) and len(resolved) == 2 and "null" in resolved:
            other = resolved[1 - resolved.index("null")]
            inner = self._memo_kind(other)
            if inner is not None and not inner.startswith("union"):
                return f"union {resolved.index('null')} {inner}"
        return None

    def _memo(self, kind: str) -> str:
        """The memo of a primitive kind: long, string or timestamp."""
        name = self._memos.get(kind)
        if name is None:
            encodings: dict[str, Callable[[Any], bytes]] = {
                "long": encode_long, "string": encode_string, "timestamp": encode_timestamp}
            encode = encodings[kind]
            name = self._memos[kind] = self._constant(_Memo(encode))
        return name

    def _enum(self, schema: dict[str, Any]) -> str:
        """The namespace name of ``schema``'s table symbol -> bytes (a KeyError for any other value)."""
        name = schema["name"]
        table = self._enum_tables.get(name)
        if table is None:
            table = self._enum_tables[name] = self._constant(
                {symbol: encode_long(i) for i, symbol in enumerate(schema["symbols"])})
            fn = self._fresh("_w")
            self.functions.append(f"def {fn}(o):\n    return {table}[o]")
            self._named[name] = fn
        return table

    def _value_function(self, schema: Any) -> str:
        """A generated function encoding one value of ``schema`` (for array items, map values)."""
        expr = self.value(schema, "o")
        if expr.endswith("(o)") and _NAME.match(expr[:-3]):
            return expr[:-3]  # a record's own function
        fn = self._fresh("_v")
        self.functions.append(f"def {fn}(o):\n    return {expr}")
        return fn

    def value(self, schema: Any, expr: str) -> str:
        """A Python expression producing the bytes of ``expr`` encoded as ``schema``."""
        if isinstance(schema, list):
            return self.union(schema, expr)
        if isinstance(schema, str):
            if schema in self._enum_tables:
                return f"{self._enum_tables[schema]}[{expr}]"
            if schema in self._named:
                return f"{self._named[schema]}({expr})"
            return self.primitive(schema, expr)
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            return self.value(kind, expr)
        if kind == "long" and schema.get("logicalType") == "timestamp-micros":
            return f"{self._memo('timestamp')}[{expr}]"
        if kind == "record":
            return f"{self.record_function(schema)}({expr})"
        if kind == "enum":
            return f"{self._enum(schema)}[{expr}]"
        if kind == "array":
            return f"_ARR({expr}, {self._value_function(schema['items'])})"
        if kind == "map":
            return f"_MAP({expr}, {self._value_function(schema['values'])})"
        return self.primitive(kind, expr)

    def primitive(self, kind: str, expr: str) -> str:
        if kind in ("int", "long"):
            return f"{self._memo('long')}[{expr}]"
        if kind == "string":
            return f"{self._memo('string')}[{expr}]"
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
        null_code, value_code = encode_long(null_at), encode_long(1 - null_at)
        kind = self._memo_kind(branches)
        if kind is not None:  # [null, memoisable]: one memo lookup, None included
            memo = self._memos.get(kind)
            if memo is None:
                memo = self._memos[kind] = self._fresh("_N")
                inner_fn = self._value_function(non_null[0])  # defined above the memo in the source
                self.functions.append(f"{memo} = _MEMO(_NULLABLE({null_code!r}, {value_code!r}, {inner_fn}))")
            return f"{memo}[{expr}]"
        var = self._fresh("v")
        inner = self.value(non_null[0], var)
        return f"({null_code!r} if ({var} := {expr}) is None else {value_code!r} + {inner})"


class _NullableEncoder:
    """A ``[null, X]`` union's encoding of one value: the branch index, then X's bytes."""

    __slots__ = ("_encode", "_null", "_value")

    def __init__(self, null_code: bytes, value_code: bytes, encode: Callable[[Any], bytes]) -> None:
        self._null, self._value, self._encode = null_code, value_code, encode

    def __call__(self, value: Any) -> bytes:
        return self._null if value is None else self._value + self._encode(value)


def _record_definition(schema: Any) -> dict[str, Any] | None:
    """The record ``schema`` defines in place (not a reference by name, not a union), if it is one."""
    while isinstance(schema, dict) and isinstance(schema.get("type"), dict):
        schema = schema["type"]
    return schema if isinstance(schema, dict) and schema.get("type") == "record" else None


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
