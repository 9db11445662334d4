"""Avro schemas of the topics: generated from contracts, committed, versioned in history.

Layout under ``schemas/``:
    <Record>.avsc                  the current schema of each topic record
    history/<Record>/v<N>.avsc     every version ever generated; the newest equals the current

``generate`` writes both (adding a history version only when the canonical form
changed); ``check`` fails when the committed files differ from the contracts.
Fingerprints are CRC-64-AVRO of the parsing canonical form, as in Avro's
single-object encoding. ``check`` also enforces FULL_TRANSITIVE compatibility across the
history (``schema_compat.py``): old readers read new data and new readers read old data, so
producers can be upgraded before consumers.

Writer schemas a producer one version ahead published on the schema log (``schema_log.py``)
are learned process-wide (``learn_published``: content-addressed by fingerprint, so every
store may share them); a store hands one out only for a record it has and only if its own
reader schema of that record can read it (``writer``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from services.core.errors import SchemaCompatibilityError, SchemaDriftError, SchemaError, UnknownSchemaError
from services.core.paths import SCHEMAS_DIR
from services.oona.avro import HEADER_LEN, compile_validator
from services.oona.avro_mapping import model_to_avro
from services.oona.schema_compat import compatibility_problems, full_transitive_problems
from services.oona.topic_registry import TopicSpec, avro_topics


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 bytes single-object encoding puts on the wire."""
    return crc64_avro(to_parsing_canonical_form(fastavro.parse_schema(schema, _write_hint=False)))


def _crc64_avro_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_EMPTY = 0xC15D213AA4D7A795
_CRC64_TABLE = _crc64_avro_table()


def crc64_avro(text: str) -> bytes:
    """The Avro spec's 64-bit Rabin fingerprint of ``text``, little-endian (as Java and fastavro give it).

    fastavro's ``fingerprint(text, "CRC-64-AVRO")`` rebuilds its 256-entry table on every call (2,048
    steps): a SchemaStore fingerprints ~80 schemas, and a replay from the archive spent ~14 % of its
    Python time there at 100k events. The table is built once here; the same bytes come out.
    """
    result, table = _CRC64_EMPTY, _CRC64_TABLE
    for byte in text.encode():
        result = (result >> 8) ^ table[(result ^ byte) & 0xFF]
    return result.to_bytes(8, "little")


def parse_record_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """fastavro's parsed form of a schema given as a JSON object (typed by fastavro as any schema)."""
    parsed = fastavro.parse_schema(schema)
    if not isinstance(parsed, dict):  # a JSON object parses to a dict: never taken
        raise SchemaError(f"schema {schema.get('name')} did not parse to a record")
    return parsed


def generated_schema(spec: TopicSpec) -> dict[str, Any]:
    return model_to_avro(spec.message_type, spec.record_name, doc=f"Record of the {spec.name} topic.")


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


@dataclass(frozen=True)
class WriterSchema:
    record_name: str
    version: int
    parsed: dict[str, Any]
    raw: dict[str, Any]  # as committed in schemas/history (what code generators read)
    published: bool = False  # learned from the schema log, not committed here


# Writer schemas learned from the schema log, by fingerprint (see learn_published).
_PUBLISHED: dict[bytes, WriterSchema] = {}
_PUBLISHED_LOCK = threading.Lock()
MAX_PUBLISHED = 4096  # schema versions kept; a log holding more is not a schema log


def learn_published(writer: WriterSchema) -> bool:
    """Remember a writer schema read (and checked) off the schema log; False if its fingerprint was known.

    The first schema learned for a fingerprint stays: the fingerprint is recomputed from the
    schema, so a later one differs at most in what the canonical form leaves out.
    """
    fp = schema_fingerprint(writer.raw)
    with _PUBLISHED_LOCK:
        if fp in _PUBLISHED or len(_PUBLISHED) >= MAX_PUBLISHED:
            return False
        _PUBLISHED[fp] = writer
        return True


def published_writer(fp: bytes) -> WriterSchema | None:
    return _PUBLISHED.get(fp)


class SchemaStore:
    """Current reader schemas by record name, and every known writer schema by fingerprint."""

    def __init__(self, schemas_dir: Path = SCHEMAS_DIR) -> None:
        self.schemas_dir = Path(schemas_dir)
        self._raw: dict[str, dict[str, Any]] = {}
        self._current: dict[str, dict[str, Any]] = {}
        self._current_version: dict[str, int] = {}
        self._current_fingerprint: dict[str, bytes] = {}
        self._writers: dict[bytes, WriterSchema] = {}
        self._published_problems: dict[bytes, str] = {}
        for spec in avro_topics():
            self._load(spec.record_name)

    def _load(self, record_name: str) -> None:
        path = self.schemas_dir / f"{record_name}.avsc"
        if not path.exists():
            raise SchemaError(f"missing schema {path}; run `make schemas`")
        raw = json.loads(path.read_text())
        self._raw[record_name] = raw
        self._current[record_name] = parse_record_schema(raw)
        current_fp = schema_fingerprint(raw)
        self._current_fingerprint[record_name] = current_fp
        for version, hist in history_versions(self.schemas_dir, record_name):
            fp = schema_fingerprint(hist)
            self._writers[fp] = WriterSchema(record_name, version, parse_record_schema(hist), hist)
            if fp == current_fp:
                self._current_version[record_name] = version
        if record_name not in self._current_version:
            raise SchemaError(f"schema {path.name} is not in schemas/history; run `make schemas`")

    def raw(self, record_name: str) -> dict[str, Any]:
        """The current schema as committed JSON (not fastavro's parsed form)."""
        return self._raw[record_name]

    def reader(self, record_name: str) -> dict[str, Any]:
        return self._current[record_name]

    def fingerprint(self, record_name: str) -> bytes:
        return self._current_fingerprint[record_name]

    def version(self, record_name: str) -> int:
        return self._current_version[record_name]

    def writer(self, fingerprint: bytes) -> WriterSchema | None:
        """The writer schema of ``fingerprint``: committed, or learned from the schema log; None if unknown.

        A learned one that this store's reader schema cannot read raises UnknownSchemaError
        with the reason (a DecodeError: the event is dead-lettered, the service goes on).
        """
        writer = self._writers.get(fingerprint)
        if writer is not None:
            return writer
        writer = _PUBLISHED.get(fingerprint)
        if writer is None:
            return None
        problem = self._published_problems.get(fingerprint)
        if problem is None:
            problem = self._published_problems[fingerprint] = self._unreadable(writer)
        if problem:
            raise UnknownSchemaError(f"writer schema {fingerprint.hex()} ({writer.record_name} v{writer.version}, "
                                     f"from the schema log) is not readable here: {problem}")
        return writer

    def _unreadable(self, writer: WriterSchema) -> str:
        """Why this store may not decode with a learned writer schema ('' when it may)."""
        if writer.record_name not in self._raw:
            return f"no record {writer.record_name} in this version of Esper"
        current = self.version(writer.record_name)
        problems = compatibility_problems(self._raw[writer.record_name], writer.raw)
        if problems:
            return f"{writer.record_name} v{current} cannot read it: {problems[0]}"
        try:
            compile_validator(writer.raw, HEADER_LEN)
        except SchemaError as exc:
            return f"its shape is not supported: {exc}"
        return ""


def history_versions(schemas_dir: Path, record_name: str) -> list[tuple[int, dict[str, Any]]]:
    folder = Path(schemas_dir) / "history" / record_name
    versions = []
    for path in folder.glob("v*.avsc"):
        versions.append((int(path.stem[1:]), json.loads(path.read_text())))
    return sorted(versions, key=lambda item: item[0])


def generate(schemas_dir: Path = SCHEMAS_DIR) -> list[str]:
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


def check(schemas_dir: Path = SCHEMAS_DIR) -> None:
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
    check_compatibility(schemas_dir)


def check_compatibility(schemas_dir: Path = SCHEMAS_DIR) -> None:
    """Raise SchemaCompatibilityError unless every record's history is FULL_TRANSITIVE compatible."""
    problems = []
    for spec in avro_topics():
        problems += full_transitive_problems(spec.record_name, history_versions(schemas_dir, spec.record_name))
    if problems:
        raise SchemaCompatibilityError("schemas break FULL_TRANSITIVE compatibility: " + "; ".join(problems))
