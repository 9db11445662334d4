"""The contracts' rules as plans for the generated model decoders (``services/oona/avro/model_decoder.py``).

``model_plan(Model)`` reads what pydantic would check on a record read from Avro: each field's
type and its ``Field`` constraints (ge/gt/le/lt, min/max length, pattern), the model's
``allow_inf_nan``, and its validators. Whatever it does not know raises ``NotFast``, and that
topic keeps pydantic per record: a constraint kind, a config key, an alias, a validator.

Validators are reproduced, not assumed away:

* ``contracts._base._to_utc`` (every ``UtcDatetime``): the decoders make every timestamp an aware
  datetime in UTC, for which ``astimezone(UTC)`` returns the datetime itself;
* ``HealthSignal._legacy_seed_id`` and ``SeedId._from_tuple`` (mode "before") change only inputs
  that a record read from Avro never is (a dict with ``seed_id`` and no ``seed_idx``: the schema's
  fields are the model's, so ``seed_id`` is checked to be none of them; a tuple or a list);
* ``AdaptationDecision._legacy_link`` (mode "before") becomes a guard: a record that sets none of
  ``command_id``, ``action``, ``family`` and has one of their legacy keys in ``metadata`` is
  handed to pydantic, which lifts them; every other record it leaves as it is.

Patterns are checked by pydantic-core itself (a validator of the constrained ``str``), so the
regular expression engine is the contract's (Rust's regex: ``$`` is the end of the text).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any

import annotated_types as at
from pydantic import AwareDatetime, BaseModel
from pydantic_core import SchemaValidator, ValidationError, core_schema

from contracts.control import LEGACY_LINK_KEYS
from services.oona.avro.model_decoder import ModelPlan, NotFast, ValuePlan

_CONFIG_KEYS = frozenset({"extra", "validate_assignment", "allow_inf_nan", "frozen"})
_NORMALISERS = frozenset({"contracts._base._to_utc"})
_LEGACY_LINK = frozenset(LEGACY_LINK_KEYS)


def _legacy_link_would_lift(fields: dict[str, Any]) -> bool:
    """``AdaptationDecision._legacy_link``'s own condition for changing a record read from Avro."""
    return (all(fields[key] is None for key in LEGACY_LINK_KEYS)
            and not _LEGACY_LINK.isdisjoint(fields["metadata"]))


def _no_seed_id_field(model: type[BaseModel]) -> None:
    if "seed_id" in model.model_fields:
        raise NotFast(f"{model.__name__}: a field named seed_id would meet _legacy_seed_id")


# qualname -> (a check of the model at plan time, the runtime guard or None)
_MODEL_VALIDATORS: dict[str, tuple[Callable[[type[BaseModel]], None], Callable[[dict[str, Any]], bool] | None]] = {
    "contracts.telemetry.HealthSignal._legacy_seed_id": (_no_seed_id_field, None),
    "contracts.seed_identity.SeedId._from_tuple": (lambda model: None, None),
    "contracts.control.AdaptationDecision._legacy_link": (lambda model: None, _legacy_link_would_lift),
}


def _qualname(func: Any) -> str:
    func = getattr(func, "__func__", func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def model_plan(model: type[BaseModel], _seen: dict[type, ModelPlan] | None = None) -> ModelPlan:
    """The plan of ``model`` (and the models inside it); ``NotFast`` when a rule of it is not reproduced."""
    seen = {} if _seen is None else _seen
    if model in seen:
        return seen[model]
    name = model.__name__
    config = model.model_config
    if set(config) - _CONFIG_KEYS:
        raise NotFast(f"{name}: config {sorted(set(config) - _CONFIG_KEYS)}")
    if (config.get("extra") == "allow" or model.__pydantic_root_model__ or model.__pydantic_post_init__
            or model.__private_attributes__):
        raise NotFast(f"{name}: extra fields, a root model, post-init or private attributes")
    decorators = model.__pydantic_decorators__
    for group in (decorators.field_validators, decorators.validators, decorators.root_validators):
        if group:
            raise NotFast(f"{name}: validators {sorted(group)}")
    guards = []
    for validator, decorator in decorators.model_validators.items():
        known = _MODEL_VALIDATORS.get(_qualname(decorator.func))
        if known is None:
            raise NotFast(f"{name}: model validator {validator}")
        check, guard = known
        check(model)
        if guard is not None:
            guards.append(guard)
    allow_inf_nan = config.get("allow_inf_nan", True)
    fields = []
    for field_name, info in model.model_fields.items():
        if info.alias not in (None, field_name) or info.validation_alias not in (None, field_name):
            raise NotFast(f"{name}.{field_name}: an alias")
        label = f"{name}.{field_name}"
        fields.append((field_name, _value_plan(info.annotation, list(info.metadata), allow_inf_nan, label, seen)))
    plan = seen[model] = ModelPlan(model, tuple(fields), tuple(guards))
    return plan


def _value_plan(annotation: Any, metadata: list[Any], allow_inf_nan: bool, label: str,
                seen: dict[type, ModelPlan]) -> ValuePlan:
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            metadata = metadata + extra
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                raise NotFast(f"{label}: the union {annotation}")
            annotation, nullable = members[0], True
        else:
            break
    kind, extra_plan = _kind(annotation, allow_inf_nan, label, seen)
    lower: list[tuple[str, Any]] = []
    upper: list[tuple[str, Any]] = []
    min_len: int | None = None
    max_len: int | None = None
    pattern = None
    for item in metadata:
        if isinstance(item, (at.Ge, at.Gt, at.Le, at.Lt)) and kind in ("int", "float"):
            if isinstance(item, at.Ge):
                lower.append(("<=", item.ge))
            elif isinstance(item, at.Gt):
                lower.append(("<", item.gt))
            elif isinstance(item, at.Le):
                upper.append(("<=", item.le))
            else:
                upper.append(("<", item.lt))
        elif isinstance(item, (at.MinLen, at.MaxLen)) and kind in ("str", "bytes", "list", "dict"):
            if isinstance(item, at.MinLen):
                min_len = item.min_length
            else:
                max_len = item.max_length
        elif type(item).__name__ == "_PydanticGeneralMetadata":
            for key, value in vars(item).items():
                if key == "pattern" and kind == "str":
                    pattern = _pattern_accepts(value)
                elif key == "allow_inf_nan" and kind == "float":
                    allow_inf_nan = value
                else:
                    raise NotFast(f"{label}: the constraint {key}={value!r}")
        elif type(item).__name__ == "AfterValidator" and kind == "datetime" and _qualname(item.func) in _NORMALISERS:
            continue
        else:
            raise NotFast(f"{label}: the constraint {item!r} on a {kind}")
    return ValuePlan(kind, nullable, tuple(lower), tuple(upper), kind == "float" and not allow_inf_nan,
                     min_len, max_len, pattern, **extra_plan)


def _kind(annotation: Any, allow_inf_nan: bool, label: str, seen: dict[type, ModelPlan]) -> tuple[str, dict[str, Any]]:
    """The plan's kind of ``annotation`` and what else the plan holds for it (members, model, items)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return "list", {"item": _value_plan(item, [], allow_inf_nan, label + "[]", seen)}
    if origin is dict:
        key, value = typing.get_args(annotation)
        key_plan = _value_plan(key, [], allow_inf_nan, label + "{key}", seen)
        if key_plan.kind != "str" or key_plan.checked or key_plan.nullable:
            raise NotFast(f"{label}: map keys other than plain strings")
        return "dict", {"item": _value_plan(value, [], allow_inf_nan, label + "{}", seen)}
    if origin is not None or not isinstance(annotation, type):
        raise NotFast(f"{label}: the type {annotation!r}")
    if annotation is bool:  # before int: a bool is an int
        return "bool", {}
    simple = {int: "int", float: "float", str: "str", bytes: "bytes", AwareDatetime: "datetime", datetime: "datetime"}
    if annotation in simple:
        return simple[annotation], {}
    if issubclass(annotation, Enum):
        return "enum", {"members": {member.value: member for member in annotation}}
    if issubclass(annotation, BaseModel):
        return "model", {"model": model_plan(annotation, seen)}
    raise NotFast(f"{label}: the type {annotation.__name__}")


def _pattern_accepts(pattern: str) -> Callable[[str], bool]:
    """Whether pydantic-core's ``str`` validator with ``pattern`` (the contracts' engine) accepts a value."""
    validator = SchemaValidator(core_schema.str_schema(pattern=pattern))

    def accepts(value: str) -> bool:
        try:
            validator.validate_python(value)
        except ValidationError:
            return False
        return True

    return accepts
