"""Differential fuzzing of the Avro layer, with fastavro's ``schemaless_reader`` as the oracle.

Inputs are structured mutations of valid single-object values of every writer schema we
ever committed (the samples of ``tests/samples.py`` encoded with each ``schemas/history``
version, and the committed fixture logs): bit flips, varint overwrites with extreme values
(0, -1, 2**31, 2**63-1, over-long encodings, wider than 64 bits, lengths just past the end),
truncation, extension, swapped fingerprints, random bodies, and stacks of those.

For every input, each decoder either returns exactly what fastavro returns for the same
writer and reader schemas, or raises ``DecodeError`` (rejecting is always allowed: fastavro
accepts bytes we reject, e.g. over-long union indexes or trailing bytes; accepting what
fastavro rejects, a different value, or any other exception is a failure):

* ``row``: the generated row decoder (``compile_decoder``), into the topic's Nissa table;
  accepted rows must also convert to Arrow;
* ``columnar``: the vectorised decoder, on chunks of inputs, row by row (``ok``);
* ``codec``: ``SingleObjectCodec.decode_record``, what every service runs;
* ``batch``: ``SingleObjectCodec.decode_batch`` on the whole chunk, what every OonaConsumer runs:
  each value's message must be the contract's ``model_validate`` of fastavro's record (or its
  ContractViolationError, with the same reason), in the chunk's order.

The same mutators serve the bounded hypothesis run in ``tests/unit/test_avro_fuzz.py`` and
the long run (``make fuzz``: ``python -m tests.fuzz.avro_differential --cases 1000000``),
which prints cases, accepted and rejected per decoder and the failures (which must be 0).
A test-only module: hypothesis never enters a production import path.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import fastavro
import pyarrow as pa

from services.core.errors import ContractViolationError, DecodeError
from services.nissa.tables import KAFKA_COLUMNS, Table, arrow_batch, row_from_record, table_for
from services.oona.avro import HEADER_LEN, SINGLE_OBJECT_MAGIC, RowDecoder, compile_decoder, encode_long
from services.oona.avro.columnar import ColumnarDecoder, columnar_decoder
from services.oona.avro.schema_walk import NamedTypes
from services.oona.codec import SingleObjectCodec, message_to_record, record_to_message
from services.oona.schema_store import SchemaStore, history_versions, schema_fingerprint
from services.oona.topic_registry import TopicSpec, avro_topics
from tests.fixtures.write_fixture_logs import fixture_path, read_fixture_log
from tests.samples import health_signal, message_for

DECODERS = ("row", "columnar", "codec", "batch")


# -- where the varints of a valid body are --------------------------------------------------------
def _read_varint(b: bytes, p: int) -> tuple[int, int]:
    z = shift = 0
    while True:
        byte = b[p]
        p += 1
        z |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (z >> 1) ^ -(z & 1), p
        shift += 7


def varint_spans(schema: Any, names: NamedTypes, b: bytes, p: int, spans: list[tuple[int, int]]) -> int:
    """Walk one valid value of ``schema`` at ``p``; append (start, end) of every varint in it (the
    ints and longs, string and bytes lengths, enum and union indexes, block counts and sizes)."""
    if isinstance(schema, list):
        index, q = _read_varint(b, p)
        spans.append((p, q))
        return varint_spans(schema[index], names, b, q, spans)
    schema = names.resolve(schema)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind in ("int", "long", "enum"):
        _, q = _read_varint(b, p)
        spans.append((p, q))
        return q
    if kind in ("string", "bytes"):
        n, q = _read_varint(b, p)
        spans.append((p, q))
        return q + n
    if kind in ("double", "float", "boolean", "null"):
        return p + {"double": 8, "float": 4, "boolean": 1, "null": 0}[kind]
    if kind == "record":
        for f in schema["fields"]:
            p = varint_spans(f["type"], names, b, p, spans)
        return p
    # array / map: blocks of items
    item = schema["items"] if kind == "array" else schema["values"]
    while True:
        count, q = _read_varint(b, p)
        spans.append((p, q))
        p = q
        if count == 0:
            return p
        if count < 0:
            count = -count
            _, q = _read_varint(b, p)
            spans.append((p, q))
            p = q
        for _ in range(count):
            if kind == "map":
                p = varint_spans("string", names, b, p, spans)
            p = varint_spans(item, names, b, p, spans)


# -- the writer schemas and their valid values ----------------------------------------------------
@dataclass
class Target:
    """One writer schema of one topic: valid values of it, and the decoders Nissa would use."""

    spec: TopicSpec
    table: Table
    version: int
    raw: dict
    parsed: dict
    fingerprint: bytes
    seeds: list[bytes]
    spans: list[list[tuple[int, int]]]  # varint spans of each seed (positions in the whole value)
    row: RowDecoder
    columnar: ColumnarDecoder | None


def _seed_messages(spec: TopicSpec) -> list:
    out = [message_for(spec), message_for(spec, run_id=None, trace_id="trace-1"),
           message_for(spec, run_id="run-é-ü-漢字", trace_id="")]
    if spec.payload.__name__ == "HealthSignal":
        for i, (name, layer_id) in enumerate([("", 0), ("b" * 12, 70_000), ("x", -(2**63)), ("é" * 7, 2**62)]):
            payload = health_signal(epoch=i, seed_idx=i).model_copy(update={"layer_name": name, "layer_id": layer_id})
            out.append(spec.message_type(sender_id="tests", topic=spec.name, run_id="r" * i, payload=payload))
    return out


def build_targets(codec: SingleObjectCodec) -> list[Target]:
    store = codec.store
    targets = []
    for spec in avro_topics():
        table = table_for(spec, store)
        records = [message_to_record(m) for m in _seed_messages(spec)]
        for version, raw in history_versions(store.schemas_dir, spec.record_name):
            parsed = fastavro.parse_schema(raw)
            fp = schema_fingerprint(raw)
            seeds = []
            for record in records:
                body = io.BytesIO()
                fastavro.schemaless_writer(body, parsed, {**record, "schema_version": version})
                seeds.append(SINGLE_OBJECT_MAGIC + fp + body.getvalue())
            log = fixture_path(spec.record_name, version)
            if log.exists():
                seeds.extend(read_fixture_log(log))
            names = NamedTypes(raw)
            spans = []
            for seed in seeds:
                found: list[tuple[int, int]] = []
                end = varint_spans(raw, names, seed, HEADER_LEN, found)
                assert end == len(seed), f"{spec.record_name} v{version}: a seed is not one body"
                spans.append(found)
            targets.append(Target(spec, table, version, raw, parsed, fp, seeds, spans,
                                  compile_decoder(raw, table, HEADER_LEN), columnar_decoder(raw, table, HEADER_LEN)))
    return targets


# -- mutations ------------------------------------------------------------------------------------
class Chooser(Protocol):
    """Where the randomness comes from: ``random.Random`` (the long run) or hypothesis (unit tests)."""

    def integer(self, low: int, high: int) -> int: ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def pick(ch: Chooser, items: Sequence) -> Any:
    return items[ch.integer(0, len(items) - 1)]


def random_bytes(ch: Chooser, n: int) -> bytes:
    return bytes(ch.integer(0, 255) for _ in range(n))


EXTREME_VARINTS = [
    encode_long(0), encode_long(-1), encode_long(1), encode_long(2**31), encode_long(-(2**31) - 1),
    encode_long(2**62), encode_long(2**63 - 1), encode_long(-(2**63)),
    b"\x80\x00", b"\x80\x80\x80\x00", b"\x82\x80\x00",  # over-long encodings of 0 and 1
    b"\xfe" + b"\xff" * 8 + b"\x01",  # 2**63 - 1: the length that wrapped the columnar decoder
    b"\xff" * 9 + b"\x7f", b"\xff" * 9 + b"\x02", b"\x80" * 9 + b"\x03",  # 10 bytes, wider than 64 bits
    b"\xff" * 10 + b"\x01", b"\x80" * 10 + b"\x00",  # 11 bytes
    b"\xff",  # a varint that never ends
]


def overwrite_varint(ch: Chooser, value: bytes, spans: list[tuple[int, int]]) -> bytes:
    """Replace one varint of the body with an extreme one, or a length just around the bytes left."""
    start, end = pick(ch, spans)
    how = ch.integer(0, 3)
    if how == 0:
        left = len(value) - end
        new = encode_long(left + ch.integer(-2, 2))
    elif how == 1:
        new = encode_long(ch.integer(-(2**63), 2**63 - 1) >> ch.integer(0, 63))
    else:
        new = pick(ch, EXTREME_VARINTS)
    return value[:start] + new + value[end:]


def flip_bits(ch: Chooser, value: bytes) -> bytes:
    out = bytearray(value)
    for _ in range(ch.integer(1, 3)):
        i = ch.integer(HEADER_LEN, len(out) - 1) if len(out) > HEADER_LEN else ch.integer(0, len(out) - 1)
        out[i] ^= 1 << ch.integer(0, 7)
    return bytes(out)


def set_byte(ch: Chooser, value: bytes) -> bytes:
    out = bytearray(value)
    out[ch.integer(0, len(out) - 1)] = pick(ch, (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF, ch.integer(0, 255)))
    return bytes(out)


def truncate(ch: Chooser, value: bytes) -> bytes:
    return value[: ch.integer(0, len(value) - 1)]


def extend(ch: Chooser, value: bytes) -> bytes:
    return value + (b"\x00" if ch.integer(0, 1) else random_bytes(ch, ch.integer(1, 16)))


def insert_or_delete(ch: Chooser, value: bytes) -> bytes:
    i = ch.integer(HEADER_LEN, len(value))
    if ch.integer(0, 1):
        return value[:i] + random_bytes(ch, ch.integer(1, 8)) + value[i:]
    return value[:i] + value[i + ch.integer(1, 8) :]


def random_body(ch: Chooser, value: bytes) -> bytes:
    return value[:HEADER_LEN] + random_bytes(ch, ch.integer(0, 160))


MUTATIONS: dict[str, Callable[..., bytes]] = {
    "varint": overwrite_varint, "bits": flip_bits, "byte": set_byte, "truncate": truncate, "extend": extend,
    "splice": insert_or_delete, "random_body": random_body,
}


def mutate(ch: Chooser, target: Target, fingerprints: Sequence[bytes]) -> tuple[bytes, str]:
    """One mutated value of ``target`` and the names of the mutations applied."""
    i = ch.integer(0, len(target.seeds) - 1)
    value, spans = target.seeds[i], target.spans[i]
    names = []
    if ch.integer(0, 9) == 0:  # another writer's fingerprint over this body (or this one over another's)
        value = value[:2] + pick(ch, fingerprints) + value[HEADER_LEN:]
        names.append("fingerprint")
    steps = ch.integer(1, 3)
    for step in range(steps):
        name = pick(ch, list(MUTATIONS))
        if name == "varint" and step > 0:  # the spans describe the seed, not an already mutated value
            name = "bits"
        value = MUTATIONS[name](ch, value, spans) if name == "varint" else MUTATIONS[name](ch, value)
        names.append(name)
        if len(value) <= HEADER_LEN:
            break
    return value, "+".join(names)


# -- running the decoders -------------------------------------------------------------------------
@dataclass
class Figures:
    cases: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    columnar_batch_errors: int = 0

    def fail(self, decoder: str, what: str, value: bytes) -> None:
        if len(self.failures) < 50:
            self.failures.append(f"{decoder}: {what} (value {value.hex()})")
        else:
            self.failures.append(decoder)

    def report(self) -> str:
        lines = [f"{'decoder':<10}{'cases':>12}{'accepted':>12}{'rejected':>12}{'failures':>10}"]
        for d in DECODERS:
            failures = sum(1 for f in self.failures if f.split(":", 1)[0] == d)
            lines.append(f"{d:<10}{self.cases[d]:>12}{self.accepted[d]:>12}{self.rejected[d]:>12}{failures:>10}")
        # Allowed (Nissa then decodes the batch row by row) but never expected: each row gets its own verdict.
        lines.append(f"columnar batch-level DecodeErrors: {self.columnar_batch_errors}")
        lines.append(f"non-DecodeError failures: {len(self.failures)}")
        return "\n".join(lines)


def oracle(target: Target, store: SchemaStore, value: bytes) -> dict | None:
    """fastavro's record for ``value`` read with ``target``'s writer schema and today's reader, or None."""
    try:
        return fastavro.schemaless_reader(io.BytesIO(value[HEADER_LEN:]), target.parsed,
                                          store.reader(target.spec.record_name))
    except Exception:  # noqa: BLE001 - the oracle's verdict, whatever it raises
        return None


def same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN, 0.0 not equal to -0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _arrow_rows(table: Table, rows: list[tuple]) -> list[dict]:
    return arrow_batch(table, rows).drop_columns([name for name, _, _ in KAFKA_COLUMNS]).to_pylist()


class Differential:
    """Runs every decoder on a value and checks its verdict against the oracle's."""

    def __init__(self, codec: SingleObjectCodec | None = None) -> None:
        self.codec = codec or SingleObjectCodec()
        self.store = self.codec.store
        self.targets = build_targets(self.codec)
        self.by_fingerprint = {t.fingerprint: t for t in self.targets}
        self.fingerprints = [t.fingerprint for t in self.targets] + [b"\x00" * 8, b"\xff" * 8]
        self.figures = Figures()

    def resolve(self, spec: TopicSpec, value: bytes) -> Target | None:
        """The writer Nissa's batch would pick for ``value`` on ``spec``'s topic (None: dead-lettered by header)."""
        if len(value) < HEADER_LEN or value[:2] != SINGLE_OBJECT_MAGIC:
            return None
        target = self.by_fingerprint.get(value[2:HEADER_LEN])
        return target if target is not None and target.spec.record_name == spec.record_name else None

    def check(self, spec: TopicSpec, values: list[bytes]) -> None:
        """Every decoder on every value (of one topic); failures go to ``figures``."""
        expected: list[tuple[Target | None, dict | None]] = []
        for value in values:
            target = self.resolve(spec, value)
            expected.append((target, oracle(target, self.store, value) if target else None))
        self._codec(spec, values, expected)
        self._batch(spec, values, expected)
        self._row(values, expected)
        by_writer: dict[bytes, list[int]] = {}
        for i, (target, _) in enumerate(expected):
            if target is not None and target.columnar is not None:
                by_writer.setdefault(target.fingerprint, []).append(i)
        for fp, index in by_writer.items():
            self._columnar(self.by_fingerprint[fp], [values[i] for i in index], [expected[i][1] for i in index])

    def _codec(self, spec: TopicSpec, values: list[bytes], expected: list) -> None:
        fig = self.figures
        for value, (_target, want) in zip(values, expected, strict=True):
            fig.cases["codec"] += 1
            try:
                got = self.codec.decode_record(spec, value)
            except DecodeError:
                fig.rejected["codec"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
                fig.fail("codec", f"raised {type(exc).__name__}: {exc}", value)
                continue
            fig.accepted["codec"] += 1
            if want is None:
                fig.fail("codec", "accepted what fastavro rejects", value)
            elif not same(got, want):
                fig.fail("codec", f"returned {got!r}, fastavro {want!r}", value)

    def _batch(self, spec: TopicSpec, values: list[bytes], expected: list) -> None:
        fig = self.figures
        try:
            outcomes = self.codec.decode_batch(spec, values)
        except Exception as exc:  # noqa: BLE001 - a record's failure must take its place, never end the batch
            fig.fail("batch", f"raised {type(exc).__name__}: {exc}", values[0])
            return
        if len(outcomes) != len(values):
            fig.fail("batch", f"{len(outcomes)} outcomes for {len(values)} values", values[0])
            return
        for value, got, (_target, want) in zip(values, outcomes, expected, strict=True):
            fig.cases["batch"] += 1
            try:
                oracle_message: Any = record_to_message(spec, want) if want is not None else None
            except ContractViolationError as exc:
                oracle_message = exc
            if isinstance(got, DecodeError):
                # Rejecting bytes is always allowed (the codec's run holds the Avro layer to fastavro);
                # a contract violation must be the contract's own verdict on fastavro's record.
                fig.rejected["batch"] += 1
                if isinstance(got, ContractViolationError) and (
                        not isinstance(oracle_message, ContractViolationError) or got.reason != oracle_message.reason):
                    fig.fail("batch", f"rejected with {got.reason!r}, the contract of fastavro's record: "
                             f"{oracle_message!r}", value)
                continue
            if isinstance(got, Exception):
                fig.fail("batch", f"{type(got).__name__} in place of a record: {got}", value)
                continue
            fig.accepted["batch"] += 1
            if want is None:
                fig.fail("batch", "accepted what fastavro rejects", value)
            elif oracle_message != got or type(oracle_message) is not type(got):
                fig.fail("batch", f"returned {got!r}, the contract of fastavro's record {oracle_message!r}", value)

    def _row(self, values: list[bytes], expected: list) -> None:
        fig = self.figures
        accepted: dict[bytes, list[tuple[bytes, tuple, dict]]] = {}
        for value, (target, want) in zip(values, expected, strict=True):
            if target is None:
                continue  # Nissa dead-letters it by its header; the codec's run checked the framing
            fig.cases["row"] += 1
            try:
                row = target.row(value, 0, 0)
            except DecodeError:
                fig.rejected["row"] += 1
                continue
            except Exception as exc:  # noqa: BLE001
                fig.fail("row", f"raised {type(exc).__name__}: {exc}", value)
                continue
            fig.accepted["row"] += 1
            if want is None:
                fig.fail("row", "accepted what fastavro rejects", value)
                continue
            accepted.setdefault(target.fingerprint, []).append((value, row, want))
        for fp, group in accepted.items():
            self._compare_rows("row", self.by_fingerprint[fp].table, group)

    def _compare_rows(self, decoder: str, table: Table, group: list[tuple[bytes, tuple, dict]]) -> None:
        fig = self.figures
        try:
            ours = _arrow_rows(table, [row for _, row, _ in group])
        except Exception:  # noqa: BLE001 - find the row that does not convert
            ours = []
            for value, row, _ in group:
                try:
                    ours.extend(_arrow_rows(table, [row]))
                except Exception as exc:  # noqa: BLE001
                    fig.fail(decoder, f"accepted a row Arrow refuses: {type(exc).__name__}: {exc}", value)
                    return
        theirs = _arrow_rows(table, [row_from_record(table, want, 0, 0) for _, _, want in group])
        for (value, _, _), a, b in zip(group, ours, theirs, strict=True):
            if not same(a, b):
                fig.fail(decoder, f"decoded {a!r}, fastavro {b!r}", value)

    def _columnar(self, target: Target, values: list[bytes], wants: list[dict | None]) -> None:
        fig = self.figures
        fig.cases["columnar"] += len(values)
        try:
            arrays, ok = target.columnar.decode(values)
        except DecodeError:
            fig.columnar_batch_errors += 1
            fig.rejected["columnar"] += len(values)
            return
        except Exception as exc:  # noqa: BLE001
            fig.fail("columnar", f"raised {type(exc).__name__}: {exc}", values[0])
            return
        n_schema = len(arrays)
        # Entries of rows that are not ok are meaningless (may not even convert): filtered first, as Nissa does.
        batch = pa.Table.from_arrays(arrays, names=[c.name for c in target.table.columns[:n_schema]])
        rows = iter(batch.filter(pa.array(ok)).to_pylist())
        good = [(v, next(rows), w) for v, w, k in zip(values, wants, ok.tolist(), strict=True) if k]
        fig.accepted["columnar"] += len(good)
        fig.rejected["columnar"] += len(values) - len(good)
        for value, _, want in good:
            if want is None:
                fig.fail("columnar", "accepted what fastavro rejects", value)
        good = [g for g in good if g[2] is not None]
        if good:
            theirs = _arrow_rows(target.table, [row_from_record(target.table, w, 0, 0) for _, _, w in good])
            for (value, ours, _), expected in zip(good, theirs, strict=True):
                if not same(ours, expected):
                    fig.fail("columnar", f"decoded {ours!r}, fastavro {expected!r}", value)


def run(cases: int, seed: int, chunk: int = 256, progress: Callable[[str], None] | None = None) -> Figures:
    """Mutated values until every decoder has seen ``cases`` of them; columnar writers get half the draws."""
    diff = Differential()
    ch = RandomChooser(seed)
    columnar = [t for t in diff.targets if t.columnar is not None]
    started = last = time.monotonic()
    fig = diff.figures
    while min(fig.cases[d] for d in DECODERS) < cases:
        target = pick(ch, columnar) if ch.integer(0, 1) else pick(ch, diff.targets)
        values = [mutate(ch, target, diff.fingerprints)[0] for _ in range(chunk)]
        diff.check(target.spec, values)
        if progress and time.monotonic() - last > 30:
            last = time.monotonic()
            rate = sum(fig.cases.values()) / (last - started)
            progress(f"{dict(fig.cases)} failures={len(fig.failures)} ({rate:.0f} decodes/s)")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000, help="mutated inputs per decoder (at least)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    started = time.monotonic()
    fig = run(args.cases, args.seed, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(fig.report())
    print(f"seed {args.seed}, {time.monotonic() - started:.0f} s")
    for failure in fig.failures[:50]:
        print("FAILURE", failure)
    return 1 if fig.failures or fig.columnar_batch_errors else 0


if __name__ == "__main__":
    sys.exit(main())
