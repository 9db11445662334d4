"""The pydantic -> Avro mapping: explicit table, strict errors, defaults."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel, Field

from services.core.errors import SchemaMappingError
from services.oona.avro_mapping import model_to_avro


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    x: int


class Everything(BaseModel):
    """An example."""

    s: str
    i: int = 3
    f: float = Field(default=0.5, description="a fraction")
    b: bool = False
    raw: bytes | None = None
    when: datetime
    colour: Colour = Colour.BLUE
    tags: list[str] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)
    inner: Inner
    maybe_inner: Inner | None = None
    inners: list[Inner] = Field(default_factory=list)


def fields_by_name(schema: dict) -> dict[str, dict]:
    return {f["name"]: f for f in schema["fields"]}


def test_type_table():
    schema = model_to_avro(Everything)
    fields = fields_by_name(schema)
    assert schema["name"] == "esper.Everything"
    assert schema["doc"] == "An example."
    assert fields["s"]["type"] == "string" and "default" not in fields["s"]
    assert fields["i"] == {"name": "i", "type": "long", "default": 3}
    assert fields["f"]["type"] == "double" and fields["f"]["doc"] == "a fraction"
    assert fields["b"]["type"] == "boolean"
    assert fields["raw"] == {"name": "raw", "type": ["null", "bytes"], "default": None}
    assert fields["when"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["colour"]["type"] == {"type": "enum", "name": "esper.Colour", "symbols": ["red", "blue"]}
    assert fields["colour"]["default"] == "blue"
    assert fields["tags"] == {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}
    assert fields["weights"]["type"] == {"type": "map", "values": "double"}
    assert fields["inner"]["type"]["name"] == "esper.Inner"
    # A named type is defined once, then referenced by name.
    assert fields["maybe_inner"]["type"] == ["null", "esper.Inner"]
    assert fields["inners"]["type"] == {"type": "array", "items": "esper.Inner"}
    fastavro.parse_schema(schema)


class BadUnion(BaseModel):
    v: int | str


class BadKey(BaseModel):
    v: dict[int, float]


class BadAny(BaseModel):
    v: Any


class BadSet(BaseModel):
    v: set[int]


@pytest.mark.parametrize("model, fragment", [
    (BadUnion, "BadUnion.v: only 'X | None' unions"),
    (BadKey, "BadKey.v: Avro maps need str keys"),
    (BadAny, "BadAny.v: no Avro mapping"),
    (BadSet, "BadSet.v: no Avro mapping"),
])
def test_unmappable_annotations_name_model_and_field(model, fragment):
    with pytest.raises(SchemaMappingError, match=fragment.replace("|", r"\|").replace("(", r"\(")):
        model_to_avro(model)


def test_non_null_default_of_an_optional_puts_the_value_branch_first():
    class WithDefault(BaseModel):
        v: int | None = 4

    field = model_to_avro(WithDefault)["fields"][0]
    assert field["type"] == ["long", "null"] and field["default"] == 4
