"""The one pydantic -> Avro mapping: an explicit type table, strict about the rest.

Supported annotations: the primitives in ``_PRIMITIVES``, ``datetime`` (UTC,
timestamp-micros), ``str`` enums, ``X | None``, ``list[X]``, ``dict[str, X]`` and
nested pydantic models (named records, defined once then referenced by name).
Anything else raises SchemaMappingError naming the model and field.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from services.core.errors import SchemaMappingError

NAMESPACE = "esper"

_PRIMITIVES: dict[type, str] = {
    bool: "boolean",  # before int: bool is a subclass of int
    int: "long",
    float: "double",
    str: "string",
    bytes: "bytes",
}

_TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}

# default_factory values that have an Avro default; any other factory means "required".
_FACTORY_DEFAULTS: dict[Any, Any] = {list: [], dict: {}}


def model_to_avro(model: type[BaseModel], record_name: str | None = None, doc: str | None = None) -> dict[str, Any]:
    """Avro schema (a JSON-able dict) of ``model``; ``record_name`` overrides its name."""
    return _Mapper().define(model, record_name, doc)


class _Mapper:
    def __init__(self) -> None:
        self._defined: set[str] = set()

    def record(self, model: type[BaseModel], name: str | None = None, doc: str | None = None) -> dict[str, Any] | str:
        """A reference by full name to a record this schema defined already; else its definition."""
        fullname = f"{NAMESPACE}.{name or _clean_name(model.__name__)}"
        if fullname in self._defined:
            return fullname
        return self.define(model, name, doc)

    def define(self, model: type[BaseModel], name: str | None = None, doc: str | None = None) -> dict[str, Any]:
        fullname = f"{NAMESPACE}.{name or _clean_name(model.__name__)}"
        self._defined.add(fullname)
        fields = [self.field(model, fname, info) for fname, info in model.model_fields.items()]
        schema: dict[str, Any] = {"type": "record", "name": fullname, "fields": fields}
        text = doc or (model.__doc__ or "").strip().split("\n\n")[0]
        if text:
            schema["doc"] = " ".join(text.split())
        return schema

    def field(self, model: type[BaseModel], name: str, info: FieldInfo) -> dict[str, Any]:
        where = f"{model.__name__}.{name}"
        avro_type = self.type_of(info.annotation, where)
        out: dict[str, Any] = {"name": name, "type": avro_type}
        if info.description:
            out["doc"] = info.description
        has_default, default = _avro_default(info, where)
        if has_default:
            if isinstance(avro_type, list) and default is not None:
                # A union's default must match its first branch.
                non_null = [t for t in avro_type if t != "null"]
                out["type"] = non_null + ["null"]
            out["default"] = default
        return out

    def type_of(self, annotation: Any, where: str) -> Any:
        annotation = _strip_annotated(annotation)
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1 or len(typing.get_args(annotation)) != 2:
                raise SchemaMappingError(f"{where}: only 'X | None' unions are supported, got {annotation}")
            return ["null", self.type_of(args[0], where)]
        if origin is list:
            (item,) = typing.get_args(annotation)
            return {"type": "array", "items": self.type_of(item, where)}
        if origin is dict:
            key, value = typing.get_args(annotation)
            if _strip_annotated(key) is not str:
                raise SchemaMappingError(f"{where}: Avro maps need str keys, got {key}")
            return {"type": "map", "values": self.type_of(value, where)}
        if origin is not None:
            raise SchemaMappingError(f"{where}: no Avro mapping for {annotation}")
        if not isinstance(annotation, type):
            raise SchemaMappingError(f"{where}: no Avro mapping for {annotation!r}")
        if issubclass(annotation, Enum):
            return self.enum(annotation, where)
        if issubclass(annotation, (datetime, AwareDatetime)):
            return dict(_TIMESTAMP)
        if issubclass(annotation, BaseModel):
            return self.record(annotation)
        for py_type, avro_name in _PRIMITIVES.items():
            if annotation is py_type:
                return avro_name
        raise SchemaMappingError(f"{where}: no Avro mapping for {annotation.__name__}")

    def enum(self, enum_type: type[Enum], where: str) -> dict[str, Any] | str:
        fullname = f"{NAMESPACE}.{enum_type.__name__}"
        if fullname in self._defined:
            return fullname
        symbols = [m.value for m in enum_type]
        if not all(isinstance(s, str) and s.isidentifier() for s in symbols):
            raise SchemaMappingError(f"{where}: enum {enum_type.__name__} needs identifier-like string values")
        self._defined.add(fullname)
        return {"type": "enum", "name": fullname, "symbols": symbols}


def _clean_name(name: str) -> str:
    # OonaMessage[HealthSignal] -> OonaMessage_HealthSignal (only used without an explicit name)
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _avro_default(info: FieldInfo, where: str) -> tuple[bool, Any]:
    if info.default_factory is not None:
        if info.default_factory in _FACTORY_DEFAULTS:
            return True, _FACTORY_DEFAULTS[info.default_factory]
        return False, None
    if info.default is PydanticUndefined:
        return False, None
    return True, _json_default(info.default, where)


def _json_default(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(value, Enum):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json_default(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _json_default(v, where) for k, v in value.items()}
    raise SchemaMappingError(f"{where}: default {value!r} has no Avro JSON form")
