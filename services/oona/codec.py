"""Wire codecs: Avro single-object encoding (default) and the Confluent wire format.

Single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema + the Avro binary body. Writer schemas are resolved against
``schemas/`` and ``schemas/history/``, so no registry server is needed; a fingerprint not
among them is looked up on the schema log (``schema_log.py``: what a producer one version
ahead published before using it) when one is attached (``use_schema_log``; every
``OonaConsumer`` attaches its cluster's), and the body is read with Avro resolution from that
writer schema to this codec's reader schema. The framing, the
encoder and the body checks live in ``services/oona/avro``: a body is first checked by that
layer's validator (the same rules Nissa's decoders apply), then read by fastavro. Whatever
the bytes, ``decode_record`` returns fastavro's record or raises ``DecodeError``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import fastavro
from pydantic import ValidationError

from contracts import OonaMessage
from services.core.errors import (
    ConfigurationError,
    ContractViolationError,
    DecodeError,
    EncodeError,
    UnknownSchemaError,
)
from services.oona.avro import (
    HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    compile_encoder,
    compile_validator,
    single_object_fingerprint,
)
from services.oona.schema_store import SchemaStore, WriterSchema
from services.oona.topic_registry import TopicSpec


class Codec(Protocol):
    def encode(self, spec: TopicSpec, message: OonaMessage[Any]) -> bytes: ...

    def encode_many(self, spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[bytes]:
        """Every message's value, in order; EncodeError (nothing returned) if any cannot be encoded."""
        ...

    def decode(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        """The message in ``data``, a record's value (None for a tombstone); DecodeError if there is none."""
        ...


def message_to_record(message: OonaMessage[Any]) -> dict[str, Any]:
    # mode="python" keeps datetimes (fastavro writes timestamp-micros) and str-enum
    # members, which compare equal to their symbols.
    return message.model_dump(mode="python")


def record_to_message(spec: TopicSpec, record: dict[str, Any]) -> OonaMessage[Any]:
    try:
        return spec.message_type.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractViolationError(
            f"{spec.record_name} violates its contract at {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from None


# What the generated encoder raises for a value its schema cannot carry.
_ENCODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, struct.error)
# The envelope's fields that differ in every event: the encoder never memoises their values.
_PER_EVENT = frozenset({"event_id"})


class SchemaLookup(Protocol):
    def refresh(self, fingerprint: bytes) -> bool: ...


class SingleObjectCodec:
    def __init__(self, store: SchemaStore | None = None) -> None:
        self.store = store or SchemaStore()
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        self._validators: dict[bytes, Callable[[bytes], None]] = {}
        self._schema_logs: list[SchemaLookup] = []

    def use_schema_log(self, schema_log: SchemaLookup) -> None:
        """Resolve unknown writer fingerprints through ``schema_log`` too (once per log)."""
        if not any(log is schema_log for log in self._schema_logs):
            self._schema_logs.append(schema_log)

    def writer_schema(self, record_name: str) -> tuple[int, dict[str, Any]]:
        """(version, schema) that ``encode`` writes ``record_name`` with: what a producer publishes first."""
        return self.store.version(record_name), self.store.raw(record_name)

    def _writer(self, fingerprint: bytes) -> WriterSchema:
        writer = self.store.writer(fingerprint)
        if writer is None and self._schema_logs:
            for schema_log in self._schema_logs:
                if schema_log.refresh(fingerprint):
                    break
            writer = self.store.writer(fingerprint)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}"
                                     + (" (not on the schema log either)" if self._schema_logs else ""))
        return writer

    def _encoder(self, record_name: str) -> Callable[[Any], bytes]:
        encoder = self._encoders.get(record_name)
        if encoder is None:
            encoder = compile_encoder(
                self.store.raw(record_name),
                constants={"schema_version": self.store.version(record_name)},
                prefix=SINGLE_OBJECT_MAGIC + self.store.fingerprint(record_name),
                per_event=_PER_EVENT,
            )
            self._encoders[record_name] = encoder
        return encoder

    def encode(self, spec: TopicSpec, message: OonaMessage[Any]) -> bytes:
        try:
            return self._encoder(spec.record_name)(message)
        except _ENCODE_ERRORS as exc:
            raise EncodeError(spec.name, f"{type(exc).__name__}: {exc}") from None

    def encode_many(self, spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[bytes]:
        # One lookup of the encoder and one try for the batch: the loop is map's, in C.
        try:
            return list(map(self._encoder(spec.record_name), messages))
        except _ENCODE_ERRORS as exc:
            raise EncodeError(spec.name, f"{type(exc).__name__}: {exc}") from None

    def decode_record(self, spec: TopicSpec, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DecodeError("message has no value (tombstone or null)")
        fingerprint = single_object_fingerprint(data)
        writer = self._writer(fingerprint)
        if writer.record_name != spec.record_name:
            raise UnknownSchemaError(
                f"schema {writer.record_name} v{writer.version} does not belong on {spec.name} "
                f"(expects {spec.record_name})"
            )
        validate = self._validators.get(fingerprint)
        if validate is None:
            validate = self._validators[fingerprint] = compile_validator(writer.raw, HEADER_LEN)
        try:
            validate(data)
        except DecodeError as exc:
            raise DecodeError(f"corrupt Avro body for {spec.record_name}: {exc.reason}") from None
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, self.store.reader(spec.record_name))
        except Exception as exc:  # fastavro raises assorted types on corrupt bodies
            raise DecodeError(f"corrupt Avro body for {spec.record_name}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise DecodeError(f"{len(data) - body.tell()} trailing bytes after the {spec.record_name} body")
        if not isinstance(record, dict):  # a record schema reads as a dict (fastavro types any datum): never taken
            raise DecodeError(f"{spec.record_name} body did not read as a record")
        return record

    def decode(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        return record_to_message(spec, self.decode_record(spec, data))


class ConfluentCodec:
    """Confluent wire format (magic 0 + 4-byte schema id) through a schema registry.

    Works with Confluent Schema Registry, Karapace and Apicurio's compatible API;
    ``mock://`` URLs use confluent-kafka's in-memory registry (unit tests).
    Subjects follow the default TopicNameStrategy: ``<topic>-value``.
    """

    def __init__(self, registry_url: str, store: SchemaStore | None = None,
                 registry_config: dict[str, Any] | None = None) -> None:
        import json

        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        if not registry_url.startswith(("http://", "https://", "mock://")):
            raise ConfigurationError(
                f"SCHEMA_REGISTRY_URL must start with http://, https:// or mock://, got {registry_url!r}"
            )
        self.store = store or SchemaStore()
        try:
            self.client = SchemaRegistryClient.new_client({"url": registry_url, **(registry_config or {})})
        except Exception as exc:
            raise ConfigurationError(f"bad schema registry settings for {registry_url}: {exc}") from None
        self._registry_url = registry_url
        self._serializers: dict[str, Any] = {}
        self._deserializers: dict[str, Any] = {}
        self._json = json
        self._serializer_cls = AvroSerializer
        self._deserializer_cls = AvroDeserializer

    def _schema_str(self, spec: TopicSpec) -> str:
        path = self.store.schemas_dir / f"{spec.record_name}.avsc"
        return path.read_text()

    def _serializer(self, spec: TopicSpec) -> Any:
        ser = self._serializers.get(spec.name)
        if ser is None:
            ser = self._serializer_cls(
                self.client,
                self._schema_str(spec),
                conf={"auto.register.schemas": True, "normalize.schemas": True},
            )
            self._serializers[spec.name] = ser
        return ser

    def _deserializer(self, spec: TopicSpec) -> Any:
        de = self._deserializers.get(spec.name)
        if de is None:
            de = self._deserializer_cls(self.client, self._schema_str(spec))
            self._deserializers[spec.name] = de
        return de

    def encode(self, spec: TopicSpec, message: OonaMessage[Any]) -> bytes:
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

        record = message_to_record(message)
        record["schema_version"] = self.store.version(spec.record_name)
        try:
            encoded: bytes = self._serializer(spec)(record, SerializationContext(spec.name, MessageField.VALUE))
            return encoded
        except SchemaRegistryError as exc:
            raise ConfigurationError(
                f"schema registry at {self._registry_url} refused {spec.record_name}: {exc}") from None
        except SerializationError as exc:
            raise EncodeError(spec.name, str(exc)) from None
        except Exception as exc:  # connection errors surface as requests/httpx exceptions
            raise ConfigurationError(f"schema registry at {self._registry_url} unreachable: {exc}") from None

    def encode_many(self, spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[bytes]:
        return [self.encode(spec, message) for message in messages]

    def decode(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        from confluent_kafka.serialization import MessageField, SerializationContext

        if not data or data[0] != 0 or len(data) < 5:
            raise DecodeError("not in the Confluent wire format (magic byte 0 + schema id)")
        try:
            record = self._deserializer(spec)(data, SerializationContext(spec.name, MessageField.VALUE))
        except Exception as exc:
            raise UnknownSchemaError(f"cannot decode Confluent-framed {spec.record_name}: {exc}") from None
        return record_to_message(spec, record)


def make_codec(schema_registry_url: str | None, store: SchemaStore | None = None) -> Codec:
    """The single-object codec, or the Confluent one when a registry URL is set."""
    if schema_registry_url:
        return ConfluentCodec(schema_registry_url, store)
    return SingleObjectCodec(store)
