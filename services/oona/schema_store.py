"""Avro schemas of the topics: generated from contracts, committed, versioned in history.

Layout under ``schemas/``:
    <Record>.avsc                  the current schema of each topic record
    history/<Record>/v<N>.avsc     every version ever generated; the newest equals the current

``generate`` writes both (adding a history version only when the canonical form
changed); ``check`` fails when the committed files differ from the contracts.
Fingerprints are CRC-64-AVRO of the parsing canonical form, as in Avro's
single-object encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from services.oona.avro_mapping import model_to_avro
from services.oona.errors import SchemaDriftError, SchemaError
from services.oona.topic_registry import TopicSpec, avro_topics

DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

def schema_fingerprint(schema: dict) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 bytes single-object encoding puts on the wire."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(schema, _write_hint=False))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def generated_schema(spec: TopicSpec) -> dict:
    return model_to_avro(spec.message_type, spec.record_name, doc=f"Record of the {spec.name} topic.")


def _dump(schema: dict) -> str:
    return json.dumps(schema, indent=2) + "\n"


@dataclass(frozen=True)
class WriterSchema:
    record_name: str
    version: int
    parsed: dict
    raw: dict  # as committed in schemas/history (what code generators read)


class SchemaStore:
    """Current reader schemas by record name, and every known writer schema by fingerprint."""

    def __init__(self, schemas_dir: Path = DEFAULT_SCHEMAS_DIR) -> None:
        self.schemas_dir = Path(schemas_dir)
        self._raw: dict[str, dict] = {}
        self._current: dict[str, dict] = {}
        self._current_version: dict[str, int] = {}
        self._current_fingerprint: dict[str, bytes] = {}
        self._writers: dict[bytes, WriterSchema] = {}
        for spec in avro_topics():
            self._load(spec.record_name)

    def _load(self, record_name: str) -> None:
        path = self.schemas_dir / f"{record_name}.avsc"
        if not path.exists():
            raise SchemaError(f"missing schema {path}; run `make schemas`")
        raw = json.loads(path.read_text())
        self._raw[record_name] = raw
        self._current[record_name] = fastavro.parse_schema(raw)
        current_fp = schema_fingerprint(raw)
        self._current_fingerprint[record_name] = current_fp
        for version, hist in history_versions(self.schemas_dir, record_name):
            fp = schema_fingerprint(hist)
            self._writers[fp] = WriterSchema(record_name, version, fastavro.parse_schema(hist), hist)
            if fp == current_fp:
                self._current_version[record_name] = version
        if record_name not in self._current_version:
            raise SchemaError(f"schema {path.name} is not in schemas/history; run `make schemas`")

    def raw(self, record_name: str) -> dict:
        """The current schema as committed JSON (not fastavro's parsed form)."""
        return self._raw[record_name]

    def reader(self, record_name: str) -> dict:
        return self._current[record_name]

    def fingerprint(self, record_name: str) -> bytes:
        return self._current_fingerprint[record_name]

    def version(self, record_name: str) -> int:
        return self._current_version[record_name]

    def writer(self, fingerprint: bytes) -> WriterSchema | None:
        return self._writers.get(fingerprint)


def history_versions(schemas_dir: Path, record_name: str) -> list[tuple[int, dict]]:
    folder = Path(schemas_dir) / "history" / record_name
    versions = []
    for path in folder.glob("v*.avsc"):
        versions.append((int(path.stem[1:]), json.loads(path.read_text())))
    return sorted(versions, key=lambda item: item[0])


def generate(schemas_dir: Path = DEFAULT_SCHEMAS_DIR) -> list[str]:
    """Write current schemas and new history versions; returns the paths written."""
    written = []
    schemas_dir = Path(schemas_dir)
    for spec in avro_topics():
        schema = generated_schema(spec)
        current = schemas_dir / f"{spec.record_name}.avsc"
        if not current.exists() or current.read_text() != _dump(schema):
            current.parent.mkdir(parents=True, exist_ok=True)
            current.write_text(_dump(schema))
            written.append(str(current))
        history = history_versions(schemas_dir, spec.record_name)
        fingerprint = schema_fingerprint(schema)
        if not any(schema_fingerprint(h) == fingerprint for _, h in history):
            version = history[-1][0] + 1 if history else 1
            path = schemas_dir / "history" / spec.record_name / f"v{version}.avsc"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_dump(schema))
            written.append(str(path))
    return written


def check(schemas_dir: Path = DEFAULT_SCHEMAS_DIR) -> None:
    """Raise SchemaDriftError listing every record whose committed schema is stale."""
    problems = []
    schemas_dir = Path(schemas_dir)
    for spec in avro_topics():
        schema = generated_schema(spec)
        current = schemas_dir / f"{spec.record_name}.avsc"
        if not current.exists():
            problems.append(f"{current.name} missing")
        elif current.read_text() != _dump(schema):
            problems.append(f"{current.name} differs from the contracts")
        fingerprint = schema_fingerprint(schema)
        if not any(schema_fingerprint(h) == fingerprint for _, h in history_versions(schemas_dir, spec.record_name)):
            problems.append(f"{spec.record_name} not recorded in history/")
    if problems:
        raise SchemaDriftError("schemas out of date (run `make schemas`): " + "; ".join(problems))
