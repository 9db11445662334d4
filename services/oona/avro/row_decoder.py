"""A fast Avro binary DECODER specialised once per (writer schema, layout): bytes -> one row tuple.

fastavro's ``schemaless_reader`` returns a dict per event (and the contracts then validate
it): ~15k events/s end to end. A sink needs columns, not objects, so this module turns one
of *our own committed* schemas (current or from ``schemas/history``) into straight-line
Python that walks the Avro body once and returns the row of a column layout (``layout.py``;
Nissa's tables) as a tuple in column order. Writer fields are matched to the layout's
columns by path, so an event written with an older schema lands in today's columns: fields
the writer lacks get the column's default, fields the reader dropped are read and discarded.
With no columns at all the same code is a validator (``compile_validator``). The services'
codec reads a value with ``compile_record_decoder``: the same checks, building the record
fastavro would return (nested dicts, timestamps as UTC datetimes) when the writer schema is
the reader's; a value of another writer schema is checked by the validator, then read by
fastavro with Avro's resolution. So every consumer of the log rejects the same bytes.

Total by construction: the generated code checks varint width, lengths and block counts
against the bytes that remain, enum indexes, union branches, value ranges (``wire.py``),
UTF-8 and trailing bytes, and turns a read past the end into a truncated-body error. Every
failure is a ``DecodeError`` with a reason; nothing else leaves ``decode``.

Safety, as in ``encoder.py``: only identifiers validated against Avro's name rule are spliced
into the generated source (as dict keys, via ``repr``) and every other value (enum tables,
defaults, struct unpackers, bounds) is passed through the function's namespace. Nothing
read from the bus ever becomes code; bytes from the bus are only indexed and sliced.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from services.core.errors import DecodeError, SchemaError
from services.oona.avro.layout import ColumnLayout, NoColumns
from services.oona.avro.schema_walk import NamedTypes, flattened_record, nullable_branch, safe_name, union_codes
from services.oona.avro.wire import read_varint, value_bounds

RowDecoder = Callable[[bytes, int, int], tuple[Any, ...]]

_FIXED = {"double": ("d", 8), "float": ("f", 4), "boolean": ("?", 1)}


def compile_decoder(writer: dict[str, Any], layout: ColumnLayout, start: int) -> RowDecoder:
    """``decode(value, partition, offset) -> row`` for values written with ``writer``.

    ``value`` is the whole Kafka value; the Avro body begins at ``start`` (after the
    single-object header) and must end exactly at the end of the value. The row holds the
    layout's columns that have a path, in order, then ``partition`` and ``offset``.
    """
    gen = _Generator(writer, layout)
    source = gen.top_function(start)
    namespace: dict[str, Any] = {"_rz": read_varint, "_Bad": DecodeError, "_struct_error": struct.error,
                                 **gen.namespace}
    exec(compile(source, f"<avro decoder {writer.get('name')}>", "exec"), namespace)  # noqa: S102 - see module doc
    decode: RowDecoder = namespace["_decode"]
    return decode


def compile_validator(writer: dict[str, Any], start: int) -> Callable[[bytes], None]:
    """``check(value)``: DecodeError unless ``value[start:]`` is exactly one well-formed body of ``writer``."""
    decode = compile_decoder(writer, NoColumns(), start)

    def check(value: bytes) -> None:
        decode(value, 0, 0)

    return check


def compile_record_decoder(writer: dict[str, Any], start: int) -> Callable[[bytes], dict[str, Any]]:
    """``decode(value) -> record``: what ``fastavro.schemaless_reader`` returns for ``value[start:]``
    read with ``writer`` as both writer and reader schema, or DecodeError (the validator's checks).

    Records are dicts, enums their symbols, ``[null, X]`` unions None or the value, and
    ``timestamp-micros`` / ``timestamp-millis`` longs UTC datetimes, as fastavro reads them
    (``tests/fuzz/avro_differential.py`` holds this decoder to fastavro's records).
    """
    gen = _Generator(writer, NoColumns(), datetimes=True)
    source = gen.record_top_function(start)
    namespace: dict[str, Any] = {"_rz": read_varint, "_Bad": DecodeError, "_struct_error": struct.error,
                                 "_ts_micros": _datetime_from_micros, "_ts_millis": _datetime_from_millis,
                                 "_DATETIMES": _DATETIMES,
                                 **gen.namespace}
    exec(compile(source, f"<avro record decoder {writer.get('name')}>", "exec"), namespace)  # noqa: S102
    decode: Callable[[bytes], dict[str, Any]] = namespace["_decode"]
    return decode


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATETIMES: dict[int, datetime] = {}  # every event of an epoch shares its timestamp: cached, bounded
_DATETIMES_MAX = 4096


def _datetime_from_micros(micros: int) -> datetime:
    """fastavro's reading of a ``timestamp-micros`` (already checked to lie in years 1..9999), cached;
    the generated code looks in the cache first."""
    if len(_DATETIMES) >= _DATETIMES_MAX:
        _DATETIMES.clear()  # cleared in place: the generated decoders hold this dict
    hit = _DATETIMES[micros] = _EPOCH + timedelta(microseconds=micros)
    return hit


def _datetime_from_millis(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


# The end of every generated top function: what a read past the value or bad UTF-8 raises, and the
# trailing-bytes test. A read past the end raises IndexError (b[p]) or struct.error (unpack_from).
_BODY_END = ("    except (IndexError, _struct_error):",
             "        raise _Bad('truncated body: the value ends inside a field') from None",
             "    except UnicodeDecodeError as exc:",
             "        raise _Bad(f'invalid UTF-8 in a string: {exc.reason} at byte {exc.start}') from None",
             "    if p != len(b):",
             "        raise _Bad(f'{len(b) - p} trailing bytes after the body')")


class _Generator:
    def __init__(self, writer: dict[str, Any], layout: ColumnLayout, *, datetimes: bool = False) -> None:
        self.layout = layout
        self.datetimes = datetimes  # timestamps as datetimes (the record decoder) or as ints (columns)
        self.writer_names = NamedTypes(writer)
        self.writer = writer
        self.namespace: dict[str, Any] = {}
        self.functions: list[str] = []
        self._counter = 0
        self._index = {c.path: i for i, c in enumerate(layout.columns) if c.path}

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
        self._flatten(self.writer, (), body, 2, assigned)
        columns = self.layout.columns
        n_schema = sum(1 for c in columns if c.path)
        prologue = [f"    c{i} = {self._constant(c.default)}" for i, c in enumerate(columns)
                    if c.path and i not in assigned]
        row = ", ".join([f"c{i}" for i in range(n_schema)] + ["part", "off"])
        # A read past the end of the value raises IndexError (b[p]) or struct.error (unpack_from);
        # the explicit checks keep every position inside [start, len(b)], so that is all they mean.
        source = ["def _decode(b, part, off):", *prologue, "    try:", f"        p = {int(start)}", *body,
                  *_BODY_END,
                  f"    return ({row})"]
        return "\n".join(self.functions + source)

    def record_top_function(self, start: int) -> str:
        """``_decode(b) -> dict``: the writer's record, read whole (no columns, nothing flattened)."""
        record = self._record_function(self.writer)
        source = ["def _decode(b):", "    try:", f"        r, p = {record}(b, {int(start)})",
                  *_BODY_END,
                  "    return r"]
        return "\n".join(self.functions + source)

    def _columns_under(self, path: tuple[str, ...]) -> list[int]:
        return [i for p, i in self._index.items() if p[: len(path)] == path]

    def _flatten(self, record: dict[str, Any], path: tuple[str, ...], out: list[str], depth: int,
                 assigned: set[int]) -> None:
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
            if nested is not None and fpath not in self._index:
                # Flattened even without columns under it (the validator, a record the reader dropped):
                # its fixed-width runs are then read with one unpack, and no dict is built.
                flush()
                _, nullable = nullable_branch(wtype)
                if nullable:
                    null_z, value_z = union_codes(wtype)
                    out.append(f"{pad}z = b[p]")
                    out.append(f"{pad}p += 1")
                    out.append(f"{pad}if z == {null_z}:")
                    under = self._columns_under(fpath)
                    out.append(f"{pad}    " + (" = ".join(f"c{i}" for i in under) + " = None" if under else "pass"))
                    out.append(f"{pad}elif z == {value_z}:")
                    inner: set[int] = set()
                    self._flatten(nested, fpath, out, depth + 1, inner)
                    out.append(f"{pad}else:")
                    out.append(f"{pad}    raise _Bad(f'bad union branch {{z:#04x}}')")
                else:
                    self._flatten(nested, fpath, out, depth, assigned)
                continue
            column = self._index.get(fpath)
            target = f"c{column}" if column is not None else "_x"
            if column is not None and depth == 2:
                assigned.add(column)
            code = _fixed_code(wtype, self.writer_names)
            if code is not None:
                fixed.append((target, *_FIXED[code]))
                continue
            flush()
            self._value(wtype, target, out, depth)
        flush()

    # -- one value into a variable ------------------------------------------------------------
    def _value(self, wtype: Any, target: str, out: list[str], depth: int) -> None:
        pad = "    " * depth
        if isinstance(wtype, list):
            inner, _ = nullable_branch(wtype)
            null_z, value_z = union_codes(wtype)
            out.append(f"{pad}z = b[p]")
            out.append(f"{pad}p += 1")
            out.append(f"{pad}if z == {null_z}:")
            out.append(f"{pad}    {target} = None")
            out.append(f"{pad}elif z == {value_z}:")
            self._value(inner, target, out, depth + 1)
            out.append(f"{pad}else:")
            out.append(f"{pad}    raise _Bad(f'bad union branch {{z:#04x}}')")
            return
        schema = self.writer_names.resolve(wtype)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("long", "int"):
            self._varint(out, pad)
            out.append(f"{pad}{target} = (z >> 1) ^ -(z & 1)")
            bounds = value_bounds(schema)
            if bounds is not None:
                low, high = self._constant(bounds[0]), self._constant(bounds[1])
                out.append(f"{pad}if not {low} <= {target} <= {high}:")
                out.append(f"{pad}    raise _Bad(f'{kind} {{{target}}} out of range')")
            logical = schema.get("logicalType") if isinstance(schema, dict) else None
            if self.datetimes and logical in ("timestamp-micros", "timestamp-millis"):
                if logical == "timestamp-micros":  # most of them: the cache first, without a call
                    out.append(f"{pad}{target} = _DATETIMES.get({target}) or _ts_micros({target})")
                else:
                    out.append(f"{pad}{target} = _ts_millis({target})")
        elif kind in ("string", "bytes"):
            self._varint(out, pad)
            out.append(f"{pad}if z & 1 or (z >> 1) > len(b) - p:")
            out.append(f"{pad}    raise _Bad(f'{kind} length {{(z >> 1) ^ -(z & 1)}} beyond the {{len(b) - p}} "
                       f"bytes left')")
            out.append(f"{pad}n = p + (z >> 1)")
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
            out.append(f"{pad}{target} = {table}.get(z)")
            out.append(f"{pad}if {target} is None:")
            out.append(f"{pad}    raise _Bad(f'enum index {{(z >> 1) ^ -(z & 1)}} out of range')")
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
            out.append(f"{pad}    if k < 0:")  # a block with its byte size: check the size, then skip it
            out.append(f"{pad}        k = -k")
            self._varint(out, pad + "        ")
            out.append(f"{pad}        if z & 1 or (z >> 1) > len(b) - p:")
            out.append(f"{pad}            raise _Bad('{kind} block size beyond the body')")
            # Every item takes at least one byte: a count beyond the bytes left is corrupt (and
            # would otherwise loop or allocate for as long as the count says).
            out.append(f"{pad}    if k > len(b) - p:")
            out.append(f"{pad}        raise _Bad(f'{kind} block of {{k}} items beyond the {{len(b) - p}} bytes left')")
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
        out.append(f"{pad}elif b[p + 1] < 128:")  # two bytes (ids, counts in the thousands): no call
        out.append(f"{pad}    z = (z & 127) | (b[p + 1] << 7)")
        out.append(f"{pad}    p += 2")
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

    def _record_function(self, record: dict[str, Any]) -> str:
        """``_rN(b, p) -> (dict, p)``: a record inside an array or map, as a STRUCT value (a dict)."""
        fn = self._fresh("_r")
        lines = [f"def {fn}(b, p):"]
        keys = []
        fixed: list[tuple[str, str, int]] = []  # a run of fixed-width fields, read with one unpack

        def flush() -> None:
            if fixed:
                unpack = self._constant(struct.Struct("<" + "".join(code for _, code, _ in fixed)).unpack_from)
                lines.append(f"    {', '.join(v for v, _, _ in fixed)}, = {unpack}(b, p)")
                lines.append(f"    p += {sum(size for _, _, size in fixed)}")
                fixed.clear()

        for field in record["fields"]:
            name = safe_name(field["name"])
            var = f"f_{name}"
            keys.append(f"{name!r}: {var}")
            code = _fixed_code(field["type"], self.writer_names)
            if code is not None:
                fixed.append((var, *_FIXED[code]))
                continue
            flush()
            self._value(field["type"], var, lines, 1)
        flush()
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
