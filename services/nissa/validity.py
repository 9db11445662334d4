"""One definition of valid for Nissa: the contracts' own constraints, as vectorised checks on Arrow.

A service validates every decoded record with pydantic (``services/oona/codec.py``:
``record_to_message``) and dead-letters what the contract rejects. Nissa must store exactly
the events a service would accept, but pydantic per event is too slow for its ingest, so the
checks are derived once per table from the same models' field metadata:

* ``ge`` / ``gt`` / ``le`` / ``lt`` (annotated_types ``Ge`` ...), on ints and floats;
* finite floats where the model's config (``allow_inf_nan=False`` in ``contracts/_base.py``)
  or the field says so;
* ``min_length`` / ``max_length`` on strings (code points, as pydantic counts), bytes, lists, maps;
* ``pattern`` on strings (same search semantics: pydantic's regex and Arrow's RE2);
* the same, recursively, for list items, map keys and values and models inside lists or maps.

A constraint this module does not know raises ``SchemaError`` when the checks are built, so a
new kind of bound cannot be skipped silently. A validator function cannot be vectorised: a
table whose model tree holds one that may reject (anything but the known normalisers below)
is marked ``exact``, and its rows are validated with the contract itself, per event (such
records are low-volume: submissions, kernels). ``tests/unit/test_nissa_validity.py`` drives
one corpus through both paths and asserts identical verdicts.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import annotated_types as at
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from services.core.errors import SchemaError
from services.nissa.tables import Table

# Validators that only normalise what they are given (they never reject a record): the
# vectorised checks stay exact for models that carry only these.
NORMALISING_VALIDATORS = frozenset({
    "contracts._base._to_utc",
    "contracts.telemetry.HealthSignal._legacy_seed_id",
    "contracts.control.AdaptationDecision._legacy_link",
    "contracts.assets.Blueprint._derive_id",
    "contracts.seed_identity.SeedId._from_tuple",
})

Check = Callable[[pa.Array], np.ndarray]  # True where a value violates the rule (null never does)


@dataclass(frozen=True)
class Rule:
    where: str  # the field path as pydantic reports it: payload.state.epoch, payload.gates[].value
    message: str
    column: str
    check: Check


@dataclass(frozen=True)
class Rejection:
    """One row a contract rejects: its place in the batch and why."""

    row: int
    reason: str


@dataclass(frozen=True)
class TableChecks:
    table: str
    record_name: str
    rules: tuple[Rule, ...]
    exact: bool  # the model has validators that only pydantic can run: validate per event as well

    def rejections(self, batch: pa.Table) -> list[Rejection]:
        """Rows of ``batch`` that violate the contract, each with the first rule it breaks."""
        n = batch.num_rows
        if n == 0 or not self.rules:
            return []
        seen = np.zeros(n, dtype=bool)
        out: list[Rejection] = []
        columns: dict[str, pa.Array] = {}
        for rule in self.rules:
            array = columns.get(rule.column)
            if array is None:
                array = columns[rule.column] = _plain(batch.column(rule.column).combine_chunks())
            bad = rule.check(array)
            new = bad & ~seen
            if new.any():
                seen |= new
                reason = f"{self.record_name} violates its contract at {rule.where}: {rule.message}"
                out.extend(Rejection(int(i), reason) for i in np.flatnonzero(new))
        out.sort(key=lambda r: r.row)
        return out


def checks_for(table: Table, model: type[BaseModel]) -> TableChecks:
    """The checks of ``table`` (columns from the Avro schema) derived from its record's ``model``."""
    rules: list[Rule] = []
    exact = _has_rejecting_validators(model, set())
    for column in table.columns:
        if not column.path:
            continue  # Kafka coordinates
        owner, info, where = _resolve(model, column.path)
        for where_, message, check in _value_rules(info.annotation, list(info.metadata), owner, where, f"{table.name}"
                                                    f".{column.name}"):
            rules.append(Rule(where_, message, column.name, check))
    return TableChecks(table.name, table.record_name, tuple(rules), exact)


# -- deriving the rules ----------------------------------------------------------------------------------

def _resolve(model: type[BaseModel], path: tuple[str, ...]) -> tuple[type[BaseModel], FieldInfo, str]:
    """The model that declares the field at ``path``, its FieldInfo, and the dotted path."""
    owner = model
    for i, name in enumerate(path):
        info = owner.model_fields.get(name)
        if info is None:
            raise SchemaError(f"{model.__name__}: no field {'.'.join(path[: i + 1])} for a column of its table")
        if i == len(path) - 1:
            return owner, info, ".".join(path)
        nested, _ = _unwrap(info.annotation)
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            raise SchemaError(f"{model.__name__}: {'.'.join(path[: i + 1])} is not a record")
        owner = nested
    raise SchemaError(f"{model.__name__}: empty column path")


def _unwrap(annotation) -> tuple[typing.Any, list]:
    """``(type, metadata)`` with ``Annotated`` layers and ``| None`` removed (null always passes)."""
    metadata: list = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            args = typing.get_args(annotation)
            annotation, metadata = args[0], metadata + list(args[1:])
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                raise SchemaError(f"only 'X | None' unions are supported, got {annotation}")
            annotation = members[0]
        else:
            return annotation, metadata


def _value_rules(annotation, metadata: list, owner: type[BaseModel], where: str,
                 label: str) -> list[tuple[str, str, Check]]:
    """(where, message, check) for one value of type ``annotation`` with constraints ``metadata``."""
    kind, inner = _unwrap(annotation)
    metadata = metadata + inner
    bounds, lengths, pattern, allow_inf_nan = [], [], None, owner.model_config.get("allow_inf_nan", True)
    for item in metadata:
        if isinstance(item, (at.Ge, at.Gt, at.Le, at.Lt)):
            bounds.append(item)
        elif isinstance(item, (at.MinLen, at.MaxLen)):
            lengths.append(item)
        elif _is_general(item):
            for key, value in vars(item).items():
                if key == "pattern":
                    pattern = value
                elif key == "allow_inf_nan":
                    allow_inf_nan = value
                elif key not in ("strict",):
                    raise SchemaError(f"{label}: no vectorised check for the constraint {key}={value!r}")
        elif _is_function_validator(item):
            continue  # decided per model by _has_rejecting_validators
        else:
            raise SchemaError(f"{label}: no vectorised check for the constraint {item!r}")
    origin = typing.get_origin(kind)
    out: list[tuple[str, str, Check]] = []
    if kind is float:
        if not allow_inf_nan:
            out.append((where, "must be a finite number", _not_finite))
        out.extend((where, _bound_text(b), _bound_check(b)) for b in bounds)
    elif kind is int:
        out.extend((where, _bound_text(b), _bound_check(b)) for b in bounds)
    elif kind in (str, bytes):
        out.extend((where, _length_text(b, "characters" if kind is str else "bytes"), _length_check(b, kind))
                   for b in lengths)
        if pattern is not None:
            out.append((where, f"must match {pattern}", _pattern_check(pattern)))
    elif origin in (list, dict):
        out.extend((where, _length_text(b, "items"), _length_check(b, origin)) for b in lengths)
        if origin is list:
            (item,) = typing.get_args(kind)
            out.extend((w, m, _items(c)) for w, m, c in _value_rules(item, [], owner, where + "[]", label))
        else:
            key, value = typing.get_args(kind)
            out.extend((w, m, _entries("key", c)) for w, m, c in _value_rules(key, [], owner, where + "{key}", label))
            out.extend((w, m, _entries("value", c))
                       for w, m, c in _value_rules(value, [], owner, where + "{}", label))
    elif isinstance(kind, type) and issubclass(kind, BaseModel):
        for name, info in kind.model_fields.items():
            out.extend(
                (w, m, _field(name, c))
                for w, m, c in _value_rules(info.annotation, list(info.metadata), kind, f"{where}.{name}", label)
            )
    elif kind is AwareDatetime or isinstance(kind, type) and issubclass(kind, (bool, Enum, datetime)):
        pass  # the Avro type is the whole constraint (enums: the reader schema's symbols are the contract's)
    else:
        raise SchemaError(f"{label}: no vectorised checks for values of type {kind!r}")
    if (bounds and kind not in (int, float)) or (lengths and kind not in (str, bytes) and origin not in (list, dict)):
        raise SchemaError(f"{label}: constraints {bounds + lengths} on a {kind!r}")
    return out


def _is_general(item) -> bool:
    return type(item).__name__ == "_PydanticGeneralMetadata"


def _is_function_validator(item) -> bool:
    return type(item).__name__ in ("AfterValidator", "BeforeValidator", "PlainValidator", "WrapValidator")


def _qualname(func) -> str:
    func = getattr(func, "__func__", func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _has_rejecting_validators(model: type[BaseModel], seen: set) -> bool:
    """Whether ``model`` or any model inside it carries a validator that is not a known normaliser."""
    if model in seen:
        return False
    seen.add(model)
    decorators = model.__pydantic_decorators__
    for group in (decorators.model_validators, decorators.field_validators, decorators.validators,
                  decorators.root_validators):
        for decorator in group.values():
            if _qualname(decorator.func) not in NORMALISING_VALIDATORS:
                return True
    for info in model.model_fields.values():
        for annotation, metadata in _annotations(info.annotation, list(info.metadata)):
            for item in metadata:
                if _is_function_validator(item) and _qualname(item.func) not in NORMALISING_VALIDATORS:
                    return True
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if _has_rejecting_validators(annotation, seen):
                    return True
    return False


def _annotations(annotation, metadata: list):
    """Every (type, metadata) inside an annotation: itself, list items, map keys and values."""
    kind, inner = _unwrap(annotation)
    yield kind, metadata + inner
    if typing.get_origin(kind) in (list, dict):
        for arg in typing.get_args(kind):
            yield from _annotations(arg, [])


# -- the checks ------------------------------------------------------------------------------------------

def _plain(array: pa.Array) -> pa.Array:
    """View types (the columnar decoder's strings) as their plain form, which every kernel takes."""
    if pa.types.is_string_view(array.type):
        return array.cast(pa.large_string())
    if pa.types.is_binary_view(array.type):
        return array.cast(pa.large_binary())
    return array


def _mask(result) -> np.ndarray:
    if result.null_count:
        result = pc.fill_null(result, False)
    return np.asarray(result.to_numpy(zero_copy_only=False), dtype=bool)


def _not_finite(array: pa.Array) -> np.ndarray:
    return _mask(pc.invert(pc.is_finite(array)))


_COMPARE = {at.Ge: ("ge", pc.less, ">="), at.Gt: ("gt", pc.less_equal, ">"),
            at.Le: ("le", pc.greater, "<="), at.Lt: ("lt", pc.greater_equal, "<")}


def _bound_check(bound) -> Check:
    attr, violated, _ = _COMPARE[type(bound)]
    limit = getattr(bound, attr)

    def check(array: pa.Array) -> np.ndarray:
        return _mask(violated(array, limit))

    return check


def _bound_text(bound) -> str:
    attr, _, symbol = _COMPARE[type(bound)]
    return f"must be {symbol} {getattr(bound, attr)}"


def _length_check(bound, kind) -> Check:
    limit = bound.min_length if isinstance(bound, at.MinLen) else bound.max_length

    def check(array: pa.Array) -> np.ndarray:
        if kind is str:
            length = pc.utf8_length(array)
        elif kind is bytes:
            length = pc.binary_length(array)
        else:
            length = pc.list_value_length(_as_list(array))
        return _mask(pc.less(length, limit) if isinstance(bound, at.MinLen) else pc.greater(length, limit))

    return check


def _length_text(bound, unit: str) -> str:
    if isinstance(bound, at.MinLen):
        return f"must have at least {bound.min_length} {unit}"
    return f"must have at most {bound.max_length} {unit}"


def _pattern_check(pattern: str) -> Check:
    def check(array: pa.Array) -> np.ndarray:
        return _mask(pc.invert(pc.match_substring_regex(array, pattern)))

    return check


def _as_list(array: pa.Array) -> pa.Array:
    """A map as the list of (key, value) structs it is laid out as."""
    if pa.types.is_map(array.type):
        return array.view(pa.list_(pa.struct([array.type.key_field, array.type.item_field])))
    return array


def _lift(array: pa.Array, values: pa.Array, check: Check) -> np.ndarray:
    """A check on the flattened children of ``array`` (a list), reported on their parent rows."""
    bad = np.zeros(len(array), dtype=bool)
    if len(values):
        hits = check(_plain(values))
        if hits.any():
            parents = pc.list_parent_indices(array).to_numpy()
            bad[parents[hits]] = True
    return bad


def _items(check: Check) -> Check:
    def lifted(array: pa.Array) -> np.ndarray:
        return _lift(array, pc.list_flatten(array), check)

    return lifted


def _entries(part: str, check: Check) -> Check:
    def lifted(array: pa.Array) -> np.ndarray:
        as_list = _as_list(array)
        return _lift(as_list, pc.list_flatten(as_list).field(part), check)

    return lifted


def _field(name: str, check: Check) -> Check:
    def inner(array: pa.Array) -> np.ndarray:
        present = np.asarray(array.is_valid(), dtype=bool)
        return check(_plain(pc.struct_field(array, name))) & present

    return inner
