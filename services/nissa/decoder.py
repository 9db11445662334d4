"""A fast Avro binary DECODER specialised once per (writer schema, table): bytes -> one row tuple.

fastavro's ``schemaless_reader`` returns a dict per event (and the contracts then validate
it): ~15k events/s end to end. The sink needs columns, not objects, so this module turns
one of *our own committed* schemas (current or from ``schemas/history``) into straight-line
Python that walks the Avro body once and returns the row of the table (see ``tables.py``)
as a tuple in column order. Writer fields are matched to the reader's columns by path, so
an event written with an older schema lands in today's columns: fields the writer lacks
get the reader's default, fields the reader dropped are read and discarded.

Safety, as in ``services/oona/avro_encoder.py``: only identifiers validated against Avro's
name rule are spliced into the generated source (as dict keys, via ``repr``) and every other
value (enum tables, defaults, struct unpackers) is passed through the function's namespace.
Nothing read from the bus ever becomes code; bytes from the bus are only indexed and sliced.
A corrupt body raises ``CorruptBodyError`` (or IndexError/KeyError/struct.error/
UnicodeDecodeError, which ``DECODE_ERRORS`` lists for the caller to catch).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from services.nissa.tables import NamedTypes, Table, flattened_record, nullable_branch, safe_name
from services.oona.errors import SchemaError

RowDecoder = Callable[[bytes, int, int], tuple]


class CorruptBodyError(ValueError):
    pass


DECODE_ERRORS = (IndexError, KeyError, ValueError, TypeError, struct.error)

_FIXED = {"double": ("d", 8), "float": ("f", 4), "boolean": ("?", 1)}
_VARINT_CACHE: dict[bytes, tuple[int, int]] = {}
_CACHE_MAX = 4096


def read_varint(b: bytes, p: int) -> tuple[int, int]:
    """The raw (still zig-zag encoded) varint at ``p`` whose first byte is >= 0x80, and the next position.

    Varints of up to 8 bytes (timestamps: every event of an epoch shares one) are cached by
    their 8-byte window, which fully determines them; the cache is bounded.
    """
    z1 = b[p + 1]
    if z1 < 0x80:
        return (b[p] & 0x7F) | (z1 << 7), p + 2
    key = b[p : p + 8]
    hit = _VARINT_CACHE.get(key)
    if hit is not None:
        return hit[0], p + hit[1]
    z = shift = 0
    q = p
    while True:
        byte = b[q]
        q += 1
        z |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise CorruptBodyError("varint longer than 10 bytes")
    if q - p <= 8:
        if len(_VARINT_CACHE) >= _CACHE_MAX:
            _VARINT_CACHE.clear()
        _VARINT_CACHE[key] = (z, q - p)
    return z, q


def compile_decoder(writer: dict, table: Table, start: int) -> RowDecoder:
    """``decode(body, partition, offset) -> row`` for events written with ``writer``.

    ``body`` is the whole Kafka value; the Avro body begins at ``start`` (after the
    single-object header) and must end exactly at the end of the value. The row holds the
    table's columns in order, the Kafka partition and offset last.
    """
    gen = _Generator(writer, table)
    source = gen.top_function(start)
    namespace: dict[str, Any] = {"_rz": read_varint, "_Bad": CorruptBodyError, **gen.namespace}
    exec(compile(source, f"<avro decoder {writer.get('name')}>", "exec"), namespace)  # noqa: S102 - see module doc
    return namespace["_decode"]


class _Generator:
    def __init__(self, writer: dict, table: Table) -> None:
        self.table = table
        self.writer_names = NamedTypes(writer)
        self.writer = writer
        self.namespace: dict[str, Any] = {}
        self.functions: list[str] = []
        self._counter = 0
        self._index = {c.path: i for i, c in enumerate(table.columns) if c.path}

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _constant(self, value: Any) -> str:
        name = self._fresh("_K")
        self.namespace[name] = value
        return name

    # -- the top-level function: a flattened record --------------------------------------------
    def top_function(self, start: int) -> str:
        body: list[str] = []
        assigned: set[int] = set()
        self._flatten(self.writer, (), body, 1, assigned)
        n_schema = sum(1 for c in self.table.columns if c.path)
        prologue = [f"    c{i} = {self._constant(c.default)}" for i, c in enumerate(self.table.columns)
                    if c.path and i not in assigned]
        row = ", ".join([f"c{i}" for i in range(n_schema)] + ["part", "off"])
        source = ["def _decode(b, part, off):", f"    p = {int(start)}", *prologue, *body,
                  "    if p != len(b):", "        raise _Bad('body length does not match the schema')",
                  f"    return ({row})"]
        return "\n".join(self.functions + source)

    def _columns_under(self, path: tuple[str, ...]) -> list[int]:
        return [i for p, i in self._index.items() if p[: len(path)] == path]

    def _flatten(self, record: dict, path: tuple[str, ...], out: list[str], depth: int, assigned: set[int]) -> None:
        """Decode the fields of a flattened record into column variables ``c<i>``."""
        pad = "    " * depth
        fixed: list[tuple[str, str, int]] = []  # pending run of fixed-width fields: (target, code, size)

        def flush() -> None:
            if fixed:
                unpack = self._constant(struct.Struct("<" + "".join(code for _, code, _ in fixed)).unpack_from)
                targets = ", ".join(t for t, _, _ in fixed)
                out.append(f"{pad}{targets}, = {unpack}(b, p)")
                out.append(f"{pad}p += {sum(size for _, _, size in fixed)}")
                fixed.clear()

        for field in record["fields"]:
            fpath = path + (safe_name(field["name"]),)
            wtype = field["type"]
            nested = flattened_record(wtype, self.writer_names)
            if nested is not None and self._columns_under(fpath) and fpath not in self._index:
                flush()
                _, nullable = nullable_branch(wtype)
                if nullable:
                    null_z, value_z = self._union_codes(wtype)
                    out.append(f"{pad}z = b[p]")
                    out.append(f"{pad}p += 1")
                    out.append(f"{pad}if z == {null_z}:")
                    under = self._columns_under(fpath)
                    out.append(f"{pad}    " + " = ".join(f"c{i}" for i in under) + " = None")
                    out.append(f"{pad}elif z == {value_z}:")
                    inner: set[int] = set()
                    self._flatten(nested, fpath, out, depth + 1, inner)
                    out.append(f"{pad}else:")
                    out.append(f"{pad}    raise _Bad('bad union branch')")
                else:
                    self._flatten(nested, fpath, out, depth, assigned)
                continue
            column = self._index.get(fpath)
            target = f"c{column}" if column is not None else "_x"
            if column is not None and depth == 1:
                assigned.add(column)
            code = _fixed_code(wtype, self.writer_names)
            if code is not None:
                fixed.append((target, *_FIXED[code]))
                continue
            flush()
            self._value(wtype, target, out, depth)
        flush()

    # -- one value into a variable ------------------------------------------------------------
    def _union_codes(self, union: list) -> tuple[int, int]:
        """Zig-zag encoded branch indexes (what the body holds) of null and of the other branch."""
        null_at = union.index("null")
        return null_at * 2, (1 - null_at) * 2

    def _value(self, wtype: Any, target: str, out: list[str], depth: int) -> None:
        pad = "    " * depth
        if isinstance(wtype, list):
            inner, _ = nullable_branch(wtype)
            null_z, value_z = self._union_codes(wtype)
            out.append(f"{pad}z = b[p]")
            out.append(f"{pad}p += 1")
            out.append(f"{pad}if z == {null_z}:")
            out.append(f"{pad}    {target} = None")
            out.append(f"{pad}elif z == {value_z}:")
            self._value(inner, target, out, depth + 1)
            out.append(f"{pad}else:")
            out.append(f"{pad}    raise _Bad('bad union branch')")
            return
        schema = self.writer_names.resolve(wtype)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("long", "int"):
            self._varint(out, pad)
            out.append(f"{pad}{target} = (z >> 1) ^ -(z & 1)")
        elif kind in ("string", "bytes"):
            self._varint(out, pad)
            out.append(f"{pad}n = p + (z >> 1)")
            out.append(f"{pad}if z & 1:")
            out.append(f"{pad}    raise _Bad('negative length')")
            out.append(f"{pad}{target} = b[p:n]" + (".decode()" if kind == "string" else ""))
            out.append(f"{pad}p = n")
        elif kind in _FIXED:
            code, size = _FIXED[kind]
            unpack = self._constant(struct.Struct("<" + code).unpack_from)
            out.append(f"{pad}{target}, = {unpack}(b, p)")
            out.append(f"{pad}p += {size}")
        elif kind == "enum":
            table = self._constant({2 * i: symbol for i, symbol in enumerate(schema["symbols"])})
            self._varint(out, pad)
            out.append(f"{pad}{target} = {table}[z]")
        elif kind == "null":
            out.append(f"{pad}{target} = None")
        elif kind in ("array", "map"):
            item = self._item_function(schema["items"] if kind == "array" else schema["values"])
            out.append(f"{pad}{target} = {'[]' if kind == 'array' else '{}'}")
            out.append(f"{pad}while True:")
            self._varint(out, pad + "    ")
            out.append(f"{pad}    k = (z >> 1) ^ -(z & 1)")
            out.append(f"{pad}    if k == 0:")
            out.append(f"{pad}        break")
            out.append(f"{pad}    if k < 0:")  # a block with its byte size: skip the size
            out.append(f"{pad}        k = -k")
            self._varint(out, pad + "        ")
            out.append(f"{pad}    for _ in range(k):")
            if kind == "array":
                out.append(f"{pad}        v, p = {item}(b, p)")
                out.append(f"{pad}        {target}.append(v)")
            else:
                self._value("string", "key", out, depth + 2)
                out.append(f"{pad}        {target}[key], p = {item}(b, p)")
        elif kind == "record":
            out.append(f"{pad}{target}, p = {self._record_function(schema)}(b, p)")
        else:
            raise SchemaError(f"fast decoder does not support Avro type {kind!r}")

    def _varint(self, out: list[str], pad: str) -> None:
        out.append(f"{pad}z = b[p]")
        out.append(f"{pad}if z < 128:")
        out.append(f"{pad}    p += 1")
        out.append(f"{pad}else:")
        out.append(f"{pad}    z, p = _rz(b, p)")

    def _item_function(self, wtype: Any) -> str:
        """``_vN(b, p) -> (value, p)`` for one array item or map value."""
        fn = self._fresh("_v")
        lines = [f"def {fn}(b, p):"]
        self._value(wtype, "t", lines, 1)
        lines.append("    return t, p")
        self.functions.append("\n".join(lines))
        return fn

    def _record_function(self, record: dict) -> str:
        """``_rN(b, p) -> (dict, p)``: a record inside an array or map, as a STRUCT value (a dict)."""
        fn = self._fresh("_r")
        lines = [f"def {fn}(b, p):"]
        keys = []
        for field in record["fields"]:
            name = safe_name(field["name"])
            var = f"f_{name}"
            self._value(field["type"], var, lines, 1)
            keys.append(f"{name!r}: {var}")
        lines.append(f"    return {{{', '.join(keys)}}}, p")
        self.functions.append("\n".join(lines))
        return fn


def _fixed_code(schema: Any, names: NamedTypes) -> str | None:
    """'double' / 'float' / 'boolean' for a fixed-width, non-null field, else None."""
    if isinstance(schema, list):
        return None
    schema = names.resolve(schema)
    kind = schema if isinstance(schema, str) else schema.get("type")
    return kind if kind in _FIXED and not (isinstance(schema, dict) and schema.get("logicalType")) else None
