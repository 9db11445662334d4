"""Avro bytes straight into contract models, the contracts' constraints checked inline: generated.

The services' codec used to read a value into fastavro's record (dicts, ``row_decoder.py``) and
then validate the record with pydantic: two passes, and pydantic alone cost more than the
decoding. For a model whose every rule is known (``ModelPlan``, derived from the contract by
``services/oona/contract_checks.py``), this module generates one function per record type that
reads each field, checks exactly the contract's constraints on it (bounds, finite floats,
lengths, patterns, enum members) and builds the model as ``model_construct`` does (``__dict__``,
the fields set, no extra, no private attributes), without pydantic.

It never decides a rejection itself: a value that breaks a constraint raises
``ContractCheckFailed``, and the codec hands that value to pydantic (``record_to_message``), which
gives the verdict and the reason; corrupt bytes raise ``DecodeError`` from the same generated
reading code as ``compile_record_decoder`` (the generator is a subclass of its generator). So a
constraint checked here too strictly costs time, never a wrong verdict; one checked too loosely
would accept what pydantic rejects, which ``tests/unit/test_codec_fast_path.py`` searches for.

The Avro type of every field must be the one the contract's type reads from without conversion
(a ``float`` field from ``double``, an ``int`` from ``long``, a datetime from a timestamp), or
the schema gets no fast decoder (``NotFast``): pydantic would convert, and the model would differ.

Safety as in ``row_decoder.py``: only validated Avro names are spliced into the source; model
classes, enum tables, bounds and checkers travel in the function's namespace. Bytes from the bus
are only indexed and sliced.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from services.core.errors import DecodeError, EsperError
from services.oona.avro.layout import NoColumns
from services.oona.avro.row_decoder import (
    _DATETIMES,
    _FIXED,
    _datetime_from_micros,
    _datetime_from_millis,
    _fixed_code,
    _Generator,
)
from services.oona.avro.schema_walk import nullable_branch, safe_name, union_codes
from services.oona.avro.wire import read_varint


class NotFast(EsperError):
    """The contract holds a rule (or the schema a type) that the generated checks do not reproduce."""


class ContractCheckFailed(EsperError):
    """A value breaks a constraint of its contract: pydantic gives the verdict and the reason."""


@dataclass(frozen=True)
class ValuePlan:
    """What the contract accepts for one value (a field, a list item, a map value)."""

    kind: str  # int, float, str, bytes, bool, datetime, enum, model, list, dict
    nullable: bool = False
    lower: tuple[tuple[str, Any], ...] = ()  # ("<=", 0): the bound, then the value
    upper: tuple[tuple[str, Any], ...] = ()  # ("<", 1): the value, then the bound
    finite: bool = False  # floats: NaN and +-inf rejected
    min_len: int | None = None
    max_len: int | None = None
    pattern: Callable[[str], bool] | None = None  # True where the contract's pattern accepts the string
    members: Mapping[str, Any] | None = None  # enums: symbol -> member
    model: ModelPlan | None = None
    item: ValuePlan | None = None  # list items, map values

    @property
    def checked(self) -> bool:
        return bool(self.lower or self.upper or self.finite or self.min_len is not None or self.max_len is not None
                    or self.pattern is not None)


@dataclass(frozen=True)
class ModelPlan:
    """A contract model: its class, its fields in order, and the runtime guards of its validators."""

    cls: type
    fields: tuple[tuple[str, ValuePlan], ...]
    # guard(fields) True: a validator of the model would change these values, pydantic must read them.
    guards: tuple[Callable[[dict[str, Any]], bool], ...] = field(default=())


# The Avro types each kind reads from unchanged (a logical type is a datetime's alone).
_AVRO_KINDS = {"int": ("int", "long"), "float": ("double", "float"), "str": ("string",), "bytes": ("bytes",),
               "bool": ("boolean",), "datetime": ("int", "long"), "enum": ("enum",), "model": ("record",),
               "list": ("array",), "dict": ("map",)}
_FIXED_KINDS = {"double": "float", "float": "float", "boolean": "bool"}
_TIMESTAMPS = ("timestamp-micros", "timestamp-millis")
_PATTERN_MEMO_MAX = 4096
_GROUP_MEMO_MAX = 4096
_GROUP_LENGTHS_MAX = 4  # byte lengths of a group tried per value
# What a model instance holds besides its class: model_construct sets these four.
_MODEL_SLOTS = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
_BASE_NAMESPACE: dict[str, Any] = {
    "_rz": read_varint, "_Bad": DecodeError, "_struct_error": struct.error, "_Slow": ContractCheckFailed,
    "_ts_micros": _datetime_from_micros, "_ts_millis": _datetime_from_millis, "_DATETIMES": _DATETIMES,
    "_INF": float("inf"), "_new": object.__new__,
}


def compile_model_decoder(writer: dict[str, Any], plan: ModelPlan, start: int,
                          per_event: Collection[str] = ()) -> Callable[[bytes], Any]:
    """``decode(value) -> model`` for values whose body (from ``start``) is written with ``writer``.

    Runs of top-level fields whose values repeat (strings, numbers, timestamps, enums) are read
    through a memo of their bytes, but for the fields named ``per_event`` (e.g. the event id).

    Raises ``DecodeError`` as ``compile_record_decoder``'s decoder does, ``ContractCheckFailed`` where a
    constraint is broken; ``NotFast`` (here) when ``writer`` and ``plan`` do not fit together.
    """
    gen = _ModelGenerator(writer, plan, frozenset(per_event))
    source = gen.record_top_function(start)
    namespace = {**_BASE_NAMESPACE, **gen.namespace}
    exec(compile(source, f"<avro model decoder {writer.get('name')}>", "exec"), namespace)  # noqa: S102 - module doc
    decode: Callable[[bytes], Any] = namespace["_decode"]
    return decode


class _ModelGenerator(_Generator):
    def __init__(self, writer: dict[str, Any], plan: ModelPlan, per_event: frozenset[str]) -> None:
        super().__init__(writer, NoColumns(), datetimes=True)
        self._top = plan
        self._per_event = per_event
        self._pending_item: ValuePlan | None = None  # the plan of the items of the array or map being emitted

    def _record_function(self, record: dict[str, Any]) -> str:
        # Called by record_top_function for the top record only: nested records go through _read.
        return self._model_function(record, self._top)

    def _item_function(self, wtype: Any) -> str:
        # The base generator emits an array's or map's block loop and asks for its item function here.
        plan, self._pending_item = self._pending_item, None
        if plan is None:
            raise NotFast("an array or map without the plan of its items")
        fn = self._fresh("_v")
        lines = [f"def {fn}(b, p):"]
        self._read(wtype, plan, "t", lines, 1)
        lines.append("    return t, p")
        self.functions.append("\n".join(lines))
        return fn

    def _model_function(self, record: dict[str, Any], plan: ModelPlan) -> str:
        """``_mN(b, p) -> (model, p)``: the record's fields read and checked, then the model built."""
        names = [safe_name(f["name"]) for f in record["fields"]]
        plans = dict(plan.fields)
        if sorted(names) != sorted(plans):
            raise NotFast(f"{plan.cls.__name__}: fields {sorted(plans)} differ from the schema's {sorted(names)}")
        fn = self._fresh("_m")
        lines = [f"def {fn}(b, p):"]
        run: list[tuple[str, str, int, ValuePlan]] = []  # fixed-width fields read with one unpack

        def flush() -> None:
            if run:
                unpack = self._constant(struct.Struct("<" + "".join(code for _, code, _, _ in run)).unpack_from)
                lines.append(f"    {', '.join(var for var, _, _, _ in run)}, = {unpack}(b, p)")
                lines.append(f"    p += {sum(size for _, _, size, _ in run)}")
                for var, _, _, value_plan in run:
                    self._checks(value_plan, var, lines, "    ")
                run.clear()

        fields = record["fields"]
        i = 0
        while i < len(fields):
            name = safe_name(fields[i]["name"])
            value_plan = plans[name]
            code = _fixed_code(fields[i]["type"], self.writer_names)
            if code is not None:
                if _FIXED_KINDS[code] != value_plan.kind:
                    raise NotFast(f"{plan.cls.__name__}.{name}: a {value_plan.kind} read from Avro {code}")
                run.append((f"f_{name}", *_FIXED[code], value_plan))
                i += 1
                continue
            flush()
            group = i
            while plan is self._top and group < len(fields) and self._repeating(fields[group]):
                group += 1
            if group - i >= 2:
                self._group([(f["type"], plans[f["name"]], f"f_{f['name']}") for f in fields[i:group]], lines)
                i = group
                continue
            self._read(fields[i]["type"], value_plan, f"f_{name}", lines, 1)
            i += 1
        flush()
        # __dict__ in the model's field order, as pydantic builds it; every field is set (Avro has them all).
        lines.append(f"    d = {{{', '.join(f'{name!r}: f_{name}' for name in plans)}}}")
        for guard in plan.guards:
            lines.append(f"    if {self._constant(guard)}(d):")
            lines.append("        raise _Slow")
        # What model_construct sets, through the slots' own setters (no attribute lookup per call).
        cls, fields_set = self._constant(plan.cls), self._constant(frozenset(plans))
        slots = {slot: self._constant(_slot_setter(plan.cls, slot)) for slot in _MODEL_SLOTS}
        lines += [f"    m = _new({cls})", f"    {slots['__dict__']}(m, d)",
                  f"    {slots['__pydantic_fields_set__']}(m, set({fields_set}))",
                  f"    {slots['__pydantic_extra__']}(m, None)", f"    {slots['__pydantic_private__']}(m, None)",
                  "    return m, p"]
        self.functions.append("\n".join(lines))
        return fn

    def _repeating(self, field: dict[str, Any]) -> bool:
        """A top-level field whose values repeat from event to event: a string, a number, a timestamp
        or an enum (or None), not named per-event."""
        inner, _ = nullable_branch(field["type"])
        schema = self.writer_names.resolve(inner)
        kind = schema if isinstance(schema, str) else schema["type"]
        return field["name"] not in self._per_event and kind in ("string", "long", "int", "enum")

    def _group(self, reads: list[tuple[Any, ValuePlan, str]], out: list[str]) -> None:
        """Read a run of repeating fields through a memo of their bytes (``_remember``).

        Reading is a function of the bytes read: where the bytes at ``p`` begin with the bytes a read
        of these fields consumed before (and whose values passed their checks), it would consume
        them again and give the same values. The memo's keys are those bytes; the lengths it holds
        are tried in turn (a handful: run ids, senders and topics of one length).
        """
        memo, lengths = self._constant({}), self._constant([])
        targets = "".join(f"{target}, " for _, _, target in reads)
        out += [f"    for n in {lengths}:", f"        hit = {memo}.get(b[p:p + n])", "        if hit is not None:",
                f"            {targets}= hit", "            p += n", "            break", "    else:", "        q = p"]
        for wtype, plan, target in reads:
            self._read(wtype, plan, target, out, 2)
        out.append(f"        {self._constant(_remember)}({memo}, {lengths}, b[q:p], ({targets}))")

    def _read(self, wtype: Any, plan: ValuePlan, target: str, out: list[str], depth: int) -> None:
        """Read one value of ``wtype`` into ``target`` and check it against ``plan``."""
        pad = "    " * depth
        if isinstance(wtype, list):
            inner, _ = nullable_branch(wtype)
            if not plan.nullable:
                raise NotFast(f"a [null, X] union for a value that cannot be None ({plan.kind})")
            null_z, value_z = union_codes(wtype)
            out += [f"{pad}z = b[p]", f"{pad}p += 1", f"{pad}if z == {null_z}:", f"{pad}    {target} = None",
                    f"{pad}elif z == {value_z}:"]
            self._read(inner, replace(plan, nullable=False), target, out, depth + 1)
            out += [f"{pad}else:", f"{pad}    raise _Bad(f'bad union branch {{z:#04x}}')"]
            return
        schema = self.writer_names.resolve(wtype)
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if kind not in _AVRO_KINDS[plan.kind] or (logical in _TIMESTAMPS) != (plan.kind == "datetime"):
            raise NotFast(f"a {plan.kind} read from Avro {kind}" + (f" ({logical})" if logical else ""))
        if kind == "record":
            assert plan.model is not None
            out.append(f"{pad}{target}, p = {self._model_function(schema, plan.model)}(b, p)")
        elif kind == "enum":
            assert plan.members is not None
            missing = [s for s in schema["symbols"] if s not in plan.members]
            if missing:
                raise NotFast(f"enum symbols {missing} are no members of the contract's enum")
            table = self._constant({2 * i: plan.members[s] for i, s in enumerate(schema["symbols"])})
            self._varint(out, pad)
            out += [f"{pad}{target} = {table}.get(z)", f"{pad}if {target} is None:",
                    f"{pad}    raise _Bad(f'enum index {{(z >> 1) ^ -(z & 1)}} out of range')"]
        else:
            if kind in ("array", "map"):
                assert plan.item is not None
                self._pending_item = plan.item
            super()._value(wtype, target, out, depth)
        self._checks(plan, target, out, pad)

    def _checks(self, plan: ValuePlan, target: str, out: list[str], pad: str) -> None:
        """Statements raising ``_Slow`` where ``target`` (not None) breaks a constraint of ``plan``."""
        value = f"len({target})" if plan.kind in ("str", "bytes", "list", "dict") else target
        lower = [f"{self._constant(bound)} {op} " for op, bound in plan.lower]
        upper = [f" {op} {self._constant(bound)}" for op, bound in plan.upper]
        if plan.min_len is not None:
            lower.append(f"{plan.min_len} <= ")
        if plan.max_len is not None:
            upper.append(f" <= {plan.max_len}")
        if plan.finite:  # NaN fails every comparison; the infinities fail the strict ones
            lower = lower or ["-_INF < "]
            upper = upper or [" < _INF"]
        if len(lower) == 1 and len(upper) == 1:
            conditions = [f"{lower[0]}{value}{upper[0]}"]
        else:
            conditions = [f"{low}{value}" for low in lower] + [f"{value}{up}" for up in upper]
        if conditions:
            out += [f"{pad}if not ({' and '.join(conditions)}):", f"{pad}    raise _Slow"]
        if plan.pattern is not None:
            accepted: set[str] = set()
            check = self._constant(_pattern_check(plan.pattern, accepted))
            out += [f"{pad}if {target} not in {self._constant(accepted)}:", f"{pad}    {check}({target})"]


def _remember(memo: dict[bytes, tuple[Any, ...]], lengths: list[int], key: bytes, values: tuple[Any, ...]) -> None:
    """Remember the values read from ``key`` (bounded: a full memo starts again, and so do its lengths)."""
    if len(memo) >= _GROUP_MEMO_MAX:
        memo.clear()
        lengths.clear()
    if len(key) not in lengths:
        if len(lengths) >= _GROUP_LENGTHS_MAX:
            return
        lengths.append(len(key))
    memo[key] = values


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The ``__set__`` of the descriptor of ``name`` (a slot, or ``__dict__``) on ``cls``."""
    for klass in cls.__mro__:
        if name in vars(klass):
            setter: Callable[[Any, Any], None] = vars(klass)[name].__set__
            return setter
    raise NotFast(f"{cls.__name__} has no slot {name}")


def _pattern_check(accepts: Callable[[str], bool], accepted: set[str]) -> Callable[[str], None]:
    """Raise ContractCheckFailed unless ``accepts(value)``; remember the values it accepted (bounded)."""

    def check(value: str) -> None:
        if not accepts(value):
            raise ContractCheckFailed
        if len(accepted) >= _PATTERN_MEMO_MAX:
            accepted.clear()
        accepted.add(value)

    return check
