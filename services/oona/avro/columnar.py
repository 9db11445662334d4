"""Vectorised Avro decoding: a whole batch of events of one writer schema -> Arrow columns at once.

For records that flatten to scalar columns only (no array, map or record inside a list; the
telemetry and epoch topics), each field is decoded for every event of the batch with a few
numpy operations over the concatenated bodies instead of Python code per event: a
position array holds where each event's next field starts, varints are read through a
10-byte window, fixed-width runs (doubles, booleans) through one gather, strings become
Arrow string arrays straight from offsets + gathered bytes. ``[null, X]`` unions and
nullable flattened records work through an ``active`` mask: rows where the branch is null
keep their position and get a null.

Corrupt bodies never raise here: every step checks the rows with the same rules as the row
decoder (varints of at most 10 bytes within 64 bits, lengths against the bytes left in the row
computed without overflow, union branches, enum indexes, value ranges, UTF-8, a body that does
not end where the schema does) and the result says which rows are good; the caller sends the
rest through the per-event decoder (``row_decoder.py``), which raises ``DecodeError`` for them
and so dead-letters them. Should a step fail for the whole batch anyway, ``decode`` raises
``DecodeError`` and the caller decodes the batch row by row. The program is built only from
our committed schemas; bytes from the bus are only data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from services.core.errors import DecodeError, EsperError
from services.oona.avro.layout import ColumnLayout
from services.oona.avro.schema_walk import NamedTypes, flattened_record, nullable_branch, safe_name, union_codes
from services.oona.avro.wire import value_bounds

_FIXED = {"double": ("<f8", 8), "float": ("<f4", 4), "boolean": ("bool", 1)}
_WINDOW = np.arange(10, dtype=np.int64)
_SHIFTS = (7 * np.arange(10, dtype=np.uint64)).astype(np.uint64)
_MAX_RUN = 240  # bytes per fixed-width gather; the concatenated buffer is padded by more than this
_PAD = b"\x00" * 256
_MAX_BUFFER = 2**31 - 1024


class NotColumnar(EsperError):
    """The schema holds a type this decoder does not vectorise (array, map, record in a list)."""


@dataclass
class _Op:
    kind: str  # "varint" | "string" | "fixed" | "enum" | "union" | "record"
    column: int | None = None  # target column index; None: read and discard
    fixed: list[tuple[int | None, str, int]] = field(default_factory=list)  # run of (column, dtype, size)
    symbols: tuple[str, ...] = ()
    null_z: int = 0
    value_z: int = 0
    body: list[_Op] = field(default_factory=list)  # union: the value branch; record: its fields
    nulls: list[int] = field(default_factory=list)  # union of a flattened record: the columns set to null
    bounds: tuple[int, int] | None = None  # varint: the values a reader accepts (int, timestamps)


class ColumnarDecoder:
    """``decode(values) -> (arrays, ok)``: Arrow arrays of the layout's schema columns, and the good rows.

    ``values`` are whole Kafka values of one writer schema; the Avro body starts at ``start``.
    ``ok[i]`` is False where value i is corrupt; its entries in the arrays are meaningless.
    No arrays at all (and ``ok`` all False) when the batch is too large for one buffer.
    """

    def __init__(self, writer: dict[str, Any], table: ColumnLayout, start: int) -> None:
        self.table = table
        self.start = start
        self.names = NamedTypes(writer)
        self._index = {c.path: i for i, c in enumerate(table.columns) if c.path}
        self.n_columns = len(self._index)
        self.program = self._record(writer, ())

    # -- building the program from the writer schema ------------------------------------------
    def _record(self, record: dict[str, Any], path: tuple[str, ...]) -> list[_Op]:
        ops: list[_Op] = []
        for f in record["fields"]:
            fpath = path + (safe_name(f["name"]),)
            column = self._index.get(fpath)
            nested = flattened_record(f["type"], self.names)
            if nested is not None and column is None:
                inner, nullable = nullable_branch(f["type"])
                body = self._record(nested, fpath)
                if nullable:
                    null_z, value_z = union_codes(f["type"])
                    nulls = [i for p, i in self._index.items() if p[: len(fpath)] == fpath]
                    ops.append(_Op("union", null_z=null_z, value_z=value_z, body=[_Op("record", body=body)],
                                   nulls=nulls))
                else:
                    ops.extend(body)
                continue
            op = self._value(f["type"], column)
            if op.kind == "fixed" and ops and ops[-1].kind == "fixed" and \
                    sum(s for _, _, s in ops[-1].fixed) + op.fixed[0][2] <= _MAX_RUN:
                ops[-1].fixed.extend(op.fixed)
            else:
                ops.append(op)
        return ops

    def _value(self, schema: Any, column: int | None) -> _Op:
        if isinstance(schema, list):
            inner, _ = nullable_branch(schema)
            null_z, value_z = union_codes(schema)
            return _Op("union", column=column, null_z=null_z, value_z=value_z, body=[self._value(inner, column)])
        schema = self.names.resolve(schema)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("long", "int"):
            return _Op("varint", column=column, bounds=value_bounds(schema))
        if kind == "string":
            return _Op("string", column=column)
        if kind in _FIXED and not (isinstance(schema, dict) and schema.get("logicalType")):
            return _Op("fixed", fixed=[(column, *_FIXED[kind])])
        if kind == "enum":
            return _Op("enum", column=column, symbols=tuple(schema["symbols"]))
        raise NotColumnar(f"{kind} is not vectorised")

    # -- running it ------------------------------------------------------------------------------
    def decode(self, values: list[bytes]) -> tuple[list[pa.Array], np.ndarray]:
        try:
            return self._decode(values)
        except (IndexError, ValueError, OverflowError, TypeError, pa.ArrowException) as exc:
            # Not expected (each step keeps its gathers inside the buffer); the caller then
            # decodes these values one by one, and the row decoder gives each its verdict.
            raise DecodeError(f"columnar decoding failed: {type(exc).__name__}: {exc}") from None

    def _decode(self, values: list[bytes]) -> tuple[list[pa.Array], np.ndarray]:
        n = len(values)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        ends = np.cumsum(lengths)
        if n == 0 or ends[-1] >= _MAX_BUFFER:  # string views address the buffer with int32 offsets
            return [], np.zeros(n, dtype=bool)
        state = _State(b"".join(values) + _PAD, ends - lengths + self.start, ends, n)
        out: dict[int, pa.Array] = {}
        self._run(self.program, state, None, out)
        state.ok &= state.pos == ends
        arrays = []
        for i, column in enumerate(self.table.columns[: self.n_columns]):
            if i in out:
                arrays.append(out[i])
            else:  # a column the writer schema does not have: the reader's default
                arrays.append(pa.array([column.default] * n, type=column.arrow_type))
        return arrays, state.ok

    def _run(self, ops: list[_Op], st: _State, active: np.ndarray | None, out: dict[int, pa.Array]) -> None:
        for op in ops:
            if op.kind == "varint":
                z = st.varint(active)
                if op.bounds is not None or op.column is not None:
                    values = _zigzag(z)
                    if op.bounds is not None:
                        bad = (values < op.bounds[0]) | (values > op.bounds[1])
                        st.fail(bad if active is None else bad & active)
                if op.column is not None:
                    # int64 -> BIGINT / INTEGER / timestamp[us, UTC] (micros since the epoch, as on the wire);
                    # unsafe: corrupt rows may hold anything, the good ones were range-checked above
                    arrow_type = self.table.columns[op.column].arrow_type
                    out[op.column] = pa.array(values, mask=_mask(active)).cast(arrow_type, safe=False)
            elif op.kind == "string":
                array = st.string(active, op.column is not None)
                if op.column is not None:
                    out[op.column] = array
            elif op.kind == "fixed":
                for column, values in st.fixed(active, op.fixed):
                    arrow_type = self.table.columns[column].arrow_type
                    out[column] = pa.array(values, mask=_mask(active)).cast(arrow_type, safe=False)
            elif op.kind == "enum":
                z = st.varint(active)
                idx = (z >> np.uint64(1)).astype(np.int64)
                bad = (z & np.uint64(1)).astype(bool) | (idx >= len(op.symbols))
                st.fail(bad if active is None else bad & active)
                if op.column is not None:
                    idx[bad] = 0  # also in inactive rows: Arrow checks the indexes behind nulls too
                    indices = pa.array(idx.astype(np.int32), mask=_mask(active))
                    out[op.column] = pa.DictionaryArray.from_arrays(indices, pa.array(op.symbols)).dictionary_decode()
            elif op.kind == "union":
                branch = st.byte(active)
                is_value = branch == op.value_z
                valid = is_value | (branch == op.null_z)
                st.fail(~valid if active is None else ~valid & active)
                inner = is_value if active is None else is_value & active
                self._run(op.body, st, inner, out)
                if op.column is None:
                    for column in op.nulls:  # a flattened record: its columns not written by the branch
                        if column not in out:
                            out[column] = pa.nulls(st.n, type=self.table.columns[column].arrow_type)
            elif op.kind == "record":
                self._run(op.body, st, active, out)


_HIGH_BITS = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F)
_TERMINATORS = np.array([1 << (8 * k + 7) for k in range(8)], dtype=np.uint64)  # the high bit of byte k
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes


class _State:
    """Positions of every row in the concatenated buffer, and which rows are still good.

    ``words`` / ``dwords`` view the buffer as a little-endian uint64 / uint32 starting at
    every byte (stride 1), so reading 8 or 4 bytes at each row's position is one gather.
    """

    def __init__(self, raw: bytes, pos: np.ndarray, ends: np.ndarray, n: int) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw, dtype=np.uint8)
        self.words = np.ndarray((len(raw) - 7,), dtype="<u8", buffer=raw, offset=0, strides=(1,))
        self.dwords = np.ndarray((len(raw) - 3,), dtype="<u4", buffer=raw, offset=0, strides=(1,))
        self.pos = pos
        self.ends = ends
        self.n = n
        self.ok = np.ones(n, dtype=bool)

    def fail(self, bad: np.ndarray) -> None:
        self.ok &= ~bad

    def _advance(self, new_pos: np.ndarray, active: np.ndarray | None) -> None:
        if active is not None:
            new_pos = np.where(active, new_pos, self.pos)
        over = new_pos > self.ends
        if over.any():  # an overrun: the row is corrupt; keep gathers inside the buffer
            self.ok &= ~over
            new_pos = np.minimum(new_pos, self.ends)
        self.pos = new_pos

    def byte(self, active: np.ndarray | None) -> np.ndarray:
        b: np.ndarray = self.buf[self.pos]
        self._advance(self.pos + 1, active)
        return b

    def varint(self, active: np.ndarray | None) -> np.ndarray:
        """Raw (zig-zag) varints as uint64: 7 bits from each byte up to the first byte below 0x80."""
        w: np.ndarray = self.words[self.pos]
        if not (w & np.uint64(0x80)).any():  # every row: one byte
            self._advance(self.pos + 1, active)
            return w & _LOW7
        term = ~w & _HIGH_BITS
        low = term & (~term + np.uint64(1))  # the high bit of the last byte
        length = np.searchsorted(_TERMINATORS, low).astype(np.int64) + 1
        data = w & (low | (low - np.uint64(1)))
        z: np.ndarray = data & _LOW7
        for g in range(1, 8):
            z |= (data >> np.uint64(g)) & np.uint64(0x7F << (7 * g))
        wide = term == 0  # 9 or 10 bytes: rare (|value| >= 2**55)
        if wide.any():
            rows = np.flatnonzero(wide)
            z[rows], length[rows] = self._wide_varints(self.pos[rows], active, rows)
        self._advance(self.pos + length, active)
        return z

    def _wide_varints(self, pos: np.ndarray, active: np.ndarray | None, rows: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        window = self.buf[pos[:, None] + _WINDOW]
        cont = window >= 0x80
        length = np.argmin(cont, axis=1) + 1
        # More than 10 bytes, or a 10th byte that carries more than bit 63: wider than 64 bits.
        too_wide = cont.all(axis=1) | (window[:, 9] > 1) & (length == 10)
        bad = np.zeros(self.n, dtype=bool)
        bad[rows] = too_wide
        self.fail(bad if active is None else bad & active)
        keep = _WINDOW[None, :] < length[:, None]
        z = (((window & 0x7F).astype(np.uint64) << _SHIFTS) * keep).sum(axis=1, dtype=np.uint64)
        return z, length

    def fixed(self, active: np.ndarray | None, run: list[tuple[int | None, str, int]]
              ) -> Iterator[tuple[int, np.ndarray]]:
        size = sum(s for _, _, s in run)
        pos = self.pos
        self._advance(pos + size, active)
        offset = 0
        for column, dtype, width in run:
            if column is not None:  # one gather of the value's width per column (inside the padding: see _MAX_RUN)
                at = pos + offset
                if dtype == "bool":
                    yield column, self.buf[at] != 0
                elif width == 8:
                    yield column, self.words[at].view(dtype)
                else:
                    yield column, self.dwords[at].view(dtype)
            offset += width

    def string(self, active: np.ndarray | None, build: bool) -> pa.Array | None:
        """Strings as an Arrow string array, built as a string_view array over the buffer itself.

        A view is 16 bytes: the length (int32), then the first 4 bytes; then either bytes 4..11
        (strings of up to 12 bytes live inline) or buffer 0 and the offset of the string in it.
        """
        z = self.varint(active)
        lengths = (z >> np.uint64(1)).astype(np.int64)  # < 2**63: fits
        # Compared with the bytes left, not as pos + length: a length near 2**63 would wrap that negative.
        bad = (z & np.uint64(1)).astype(bool) | (lengths > self.ends - self.pos)
        if active is not None:
            bad &= active
            lengths = np.where(active, lengths, 0)
        if bad.any():
            self.fail(bad)
            lengths[bad] = 0
        starts = self.pos
        self._advance(self.pos + lengths, active)
        if not build:
            return None
        first4 = self.dwords[starts].astype(np.uint64) & _BYTE_MASKS[np.minimum(lengths, 4)]
        next8 = self.words[starts + 4] & _BYTE_MASKS[np.clip(lengths - 4, 0, 8)]
        views = np.empty((self.n, 2), dtype=np.uint64)
        views[:, 0] = lengths.astype(np.uint64) | (first4 << np.uint64(32))
        views[:, 1] = np.where(lengths <= 12, next8, starts.astype(np.uint64) << np.uint64(32))
        validity = None if active is None else pa.py_buffer(np.packbits(active, bitorder="little"))
        array = pa.Array.from_buffers(pa.string_view(), self.n, [validity, pa.py_buffer(views), pa.py_buffer(self.raw)])
        try:
            array.validate(full=True)  # UTF-8
        except pa.ArrowInvalid:  # find the rows (corrupt data only: a Python loop is fine), empty their strings
            spans = zip(starts.tolist(), lengths.tolist(), strict=True)
            invalid = np.array([not _is_utf8(self.raw[s : s + n]) for s, n in spans])
            self.fail(invalid)
            views[invalid] = 0
            array = pa.Array.from_buffers(pa.string_view(), self.n,
                                          [validity, pa.py_buffer(views), pa.py_buffer(self.raw)])
        return array.cast(pa.string())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _zigzag(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)


def _mask(active: np.ndarray | None) -> np.ndarray | None:
    return None if active is None else ~active


def columnar_decoder(writer: dict[str, Any], table: ColumnLayout, start: int) -> ColumnarDecoder | None:
    """The vectorised decoder of ``writer`` for ``table``, or None when the schema is not all scalars."""
    try:
        return ColumnarDecoder(writer, table, start)
    except NotColumnar:
        return None
