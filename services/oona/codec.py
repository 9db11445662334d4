"""Wire codecs: Avro single-object encoding (default) and the Confluent wire format.

Single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema + the Avro binary body. Writer schemas are resolved against
``schemas/`` and ``schemas/history/``, so no registry server is needed; a fingerprint not
among them is looked up on the schema log (``schema_log.py``: what a producer one version
ahead published before using it) when one is attached (``use_schema_log``; every
``OonaConsumer`` attaches its cluster's), and the body is read with Avro resolution from that
writer schema to this codec's reader schema. The framing, the
encoder and the decoders live in ``services/oona/avro``: a body of the reader's own schema
(nearly every event) is read by a decoder generated for it, which checks the bytes as Nissa's
decoders do and builds fastavro's record; a body of another writer schema is checked by that
layer's validator, then read by fastavro with Avro's resolution. Whatever the bytes,
``decode_record`` returns fastavro's record or raises ``DecodeError``.

Fast path: a value of the reader's own schema on a topic whose contract has a plan
(``contract_checks.py``: every rule of the model reproduced) is read by a decoder generated from
the schema and the plan (``avro/model_decoder.py``), straight into the message, its constraints
checked inline, without pydantic. A value that breaks a constraint, or is corrupt, or of another
writer schema, takes the path below, so pydantic gives every rejection and its reason.

Otherwise ``decode_batch`` decodes a consumed batch of one topic into records and validates them
against the contract in one pydantic-core call (a ``TypeAdapter`` of the list); only a batch with
a contract violation in it is validated again record by record, to tell which records fail and
why (the same reasons as ``decode``). The cyclic garbage collector is paused while a batch is
decoded: the records and messages are acyclic (reference counting frees them), yet their
allocations would trigger collections that trace the whole heap, a fifth of the batch's time.
"""

from __future__ import annotations

import gc
import io
import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import fastavro
from pydantic import TypeAdapter, ValidationError

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
    compile_record_decoder,
    compile_validator,
    single_object_fingerprint,
)
from services.oona.avro.model_decoder import ContractCheckFailed, NotFast, compile_model_decoder
from services.oona.contract_checks import model_plan
from services.oona.isolation import is_record_failure
from services.oona.schema_store import SchemaStore, WriterSchema
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

RecordDecoder = Callable[[bytes], dict[str, Any]]
MessageDecoder = Callable[[bytes], OonaMessage[Any]]
# What sends a value from the fast path to pydantic's: a broken constraint, or bytes to be judged.
_TO_PYDANTIC = (ContractCheckFailed, DecodeError)


class Codec(Protocol):
    def encode(self, spec: TopicSpec, message: OonaMessage[Any]) -> bytes: ...

    def encode_many(self, spec: TopicSpec, messages: Sequence[OonaMessage[Any]]) -> list[bytes]:
        """Every message's value, in order; EncodeError (nothing returned) if any cannot be encoded."""
        ...

    def decode(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        """The message in ``data``, a record's value (None for a tombstone); DecodeError if there is none."""
        ...

    def decode_batch(self, spec: TopicSpec, values: Sequence[bytes | None]) -> list[OonaMessage[Any] | Exception]:
        """``decode`` of every value, in order: the message, or the record's failure (a DecodeError, or
        another exception that ``is_record_failure``). Any other exception propagates."""
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


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """The cyclic collector off for a bounded stretch of acyclic allocations; back on (if it was) after.

    The allocations still count: the first one after the pause triggers the collection they are due.
    """
    # Threads decode at the same time (a service's consumers, Nissa's sink): the pauses are counted,
    # so the collector comes back only when the last one ends, and only if it was on before the first.
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


_LIST_ADAPTERS: dict[type, TypeAdapter[list[Any]]] = {}


def records_to_messages(spec: TopicSpec, records: list[dict[str, Any]]) -> list[OonaMessage[Any] | Exception]:
    """``record_to_message`` of every record: one validation of the whole list, record by record
    only when that fails (each failing record's ContractViolationError, or whatever a contract's
    validator raised on it, takes its place)."""
    adapter = _LIST_ADAPTERS.get(spec.message_type)
    if adapter is None:
        adapter = _LIST_ADAPTERS[spec.message_type] = TypeAdapter(list[spec.message_type])  # type: ignore[name-defined]
    try:
        return list(adapter.validate_python(records))
    except Exception:  # noqa: BLE001 - a violation, or a contract's validator raising on one record: see which
        pass
    out: list[OonaMessage[Any] | Exception] = []
    for record in records:
        try:
            out.append(record_to_message(spec, record))
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            out.append(exc)
    return out


def _each_or_failure(decode: Callable[[bytes | None], Any], values: Sequence[bytes | None]) -> list[Any]:
    """``decode`` of each value, or the record failure it raised in its place (other errors propagate)."""
    out: list[Any] = []
    for value in values:
        try:
            out.append(decode(value))
        except Exception as exc:
            if not is_record_failure(exc):
                raise
            out.append(exc)
    return out


def decode_each(codec: Codec, spec: TopicSpec, values: Sequence[bytes | None]) -> list[OonaMessage[Any] | Exception]:
    """``codec.decode`` of each value, its record failure in its place: ``decode_batch`` for codecs
    that have nothing faster."""
    return _each_or_failure(lambda value: codec.decode(spec, value), values)


class SchemaLookup(Protocol):
    def refresh(self, fingerprint: bytes) -> bool: ...


class SingleObjectCodec:
    def __init__(self, store: SchemaStore | None = None) -> None:
        self.store = store or SchemaStore()
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        self._decoders: dict[tuple[bytes, str], RecordDecoder] = {}
        self._fast: dict[str, tuple[bytes, MessageDecoder] | None] = {}
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

    def _decoder(self, spec: TopicSpec, fingerprint: bytes) -> RecordDecoder:
        """The decoder of ``spec``'s bodies written with ``fingerprint``'s schema (compiled once)."""
        decoder = self._decoders.get((fingerprint, spec.record_name))
        if decoder is not None:
            return decoder
        writer = self._writer(fingerprint)
        if writer.record_name != spec.record_name:
            raise UnknownSchemaError(
                f"schema {writer.record_name} v{writer.version} does not belong on {spec.name} "
                f"(expects {spec.record_name})"
            )
        if fingerprint == self.store.fingerprint(spec.record_name):
            decoder = compile_record_decoder(writer.raw, HEADER_LEN)
        else:
            decoder = _resolving_decoder(writer, self.store.reader(spec.record_name))
        self._decoders[(fingerprint, spec.record_name)] = decoder
        return decoder

    def decode_record(self, spec: TopicSpec, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DecodeError("message has no value (tombstone or null)")
        decode = self._decoder(spec, single_object_fingerprint(data))
        try:
            return decode(data)
        except DecodeError as exc:
            raise DecodeError(f"corrupt Avro body for {spec.record_name}: {exc.reason}") from None

    def fast_decoder(self, spec: TopicSpec) -> tuple[bytes, MessageDecoder] | None:
        """(header, decoder) of the fast path for ``spec``'s values of the reader's own schema (those
        starting with ``header``), or None where its contract keeps pydantic (compiled once)."""
        try:
            return self._fast[spec.record_name]
        except KeyError:
            pass
        fast = None
        try:
            decoder = compile_model_decoder(self.store.raw(spec.record_name), model_plan(spec.message_type),
                                            HEADER_LEN, _PER_EVENT)
            fast = (SINGLE_OBJECT_MAGIC + self.store.fingerprint(spec.record_name), decoder)
        except NotFast as exc:
            log.debug("no fast path record=%s reason=%s", spec.record_name, exc)
        self._fast[spec.record_name] = fast
        return fast

    def _decode_slow(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        return record_to_message(spec, self.decode_record(spec, data))

    def decode(self, spec: TopicSpec, data: bytes | None) -> OonaMessage[Any]:
        fast = self.fast_decoder(spec)
        if fast is not None and data is not None and data.startswith(fast[0]):
            try:
                return fast[1](data)
            except _TO_PYDANTIC:
                pass
        return self._decode_slow(spec, data)

    def decode_batch(self, spec: TopicSpec, values: Sequence[bytes | None]) -> list[OonaMessage[Any] | Exception]:
        fast = self.fast_decoder(spec)
        if fast is not None:
            return self._decode_batch_fast(spec, values, *fast)
        with cyclic_gc_paused():
            results = _each_or_failure(lambda value: self.decode_record(spec, value), values)
            at = [i for i, r in enumerate(results) if not isinstance(r, Exception)]  # the records' places
            for i, message in zip(at, records_to_messages(spec, [results[i] for i in at]), strict=True):
                results[i] = message
        return results


    def _decode_batch_fast(self, spec: TopicSpec, values: Sequence[bytes | None], header: bytes,
                           decode: MessageDecoder) -> list[OonaMessage[Any] | Exception]:
        out: list[OonaMessage[Any] | Exception] = []
        append = out.append
        with cyclic_gc_paused():
            for value in values:
                if value is not None and value.startswith(header):
                    try:
                        append(decode(value))
                        continue
                    except _TO_PYDANTIC:
                        pass
                try:
                    append(self._decode_slow(spec, value))
                except Exception as exc:
                    if not is_record_failure(exc):
                        raise
                    append(exc)
        return out


def _resolving_decoder(writer: WriterSchema, reader: dict[str, Any]) -> RecordDecoder:
    """Bodies of another writer schema: checked by the generated validator, then read by fastavro
    with Avro's resolution to ``reader``."""
    validate = compile_validator(writer.raw, HEADER_LEN)

    def decode(data: bytes) -> dict[str, Any]:
        validate(data)
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader)
        except Exception as exc:  # fastavro raises assorted types on corrupt bodies
            raise DecodeError(f"{type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):  # the validator rejects these first: never taken
            raise DecodeError(f"{len(data) - body.tell()} trailing bytes after the body")
        if not isinstance(record, dict):  # a record schema reads as a dict (fastavro types any datum): never taken
            raise DecodeError("the body did not read as a record")
        return record

    return decode

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

    def decode_batch(self, spec: TopicSpec, values: Sequence[bytes | None]) -> list[OonaMessage[Any] | Exception]:
        return decode_each(self, spec, values)


def make_codec(schema_registry_url: str | None, store: SchemaStore | None = None) -> Codec:
    """The single-object codec, or the Confluent one when a registry URL is set."""
    if schema_registry_url:
        return ConfluentCodec(schema_registry_url, store)
    return SingleObjectCodec(store)
