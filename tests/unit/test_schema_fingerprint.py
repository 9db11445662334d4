"""The CRC-64-AVRO fingerprint with its table built once: the same bytes as fastavro's, for every schema we keep."""

from __future__ import annotations

import json

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from services.core.paths import SCHEMAS_DIR
from services.oona.schema_store import crc64_avro, schema_fingerprint

SCHEMA_FILES = sorted(SCHEMAS_DIR.rglob("*.avsc"))


def test_there_are_schemas_to_check():
    assert len(SCHEMA_FILES) > 20  # the current schemas and their history


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: str(p.relative_to(SCHEMAS_DIR)))
def test_every_kept_schema_has_fastavros_fingerprint(path):
    schema = json.loads(path.read_text())
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema, _write_hint=False))
    assert schema_fingerprint(schema) == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@pytest.mark.parametrize("text", ["", "a", '"int"', "naïve ✓ 𝄞", "x" * 5000])
def test_any_text_has_fastavros_fingerprint(text):
    assert crc64_avro(text) == bytes.fromhex(fingerprint(text, "CRC-64-AVRO"))
