"""Esper's one exception tree. Everything Esper raises on purpose derives from EsperError.

The command line catches ``EsperError`` once and prints its message, always one line, with exit code 1
(``UsageError``: 2). Components define their own errors as subclasses (``NissaError``, ``KasminaError``,
``BlueprintError`` ...), keeping a builtin base where callers catch it (``ValueError``, ``LookupError``).

    EsperError
    ├── UsageError                     command-line arguments that parse but do not go together
    ├── InputError (ValueError)        a file or value the user gave cannot be used (run config, blueprints)
    ├── FatalError                     stop the service: retrying cannot help
    │   ├── ConfigurationError         invalid setting, bad SCHEMA_REGISTRY_URL
    │   ├── BrokerUnavailableError     no broker answered within the timeout
    │   └── LocalBrokerError           the project's own Kafka could not be set up/started
    ├── SchemaError
    │   ├── SchemaMappingError         a contract annotation with no Avro mapping
    │   ├── SchemaDriftError           committed schemas differ from the contracts
    │   └── SchemaCompatibilityError   a schema cannot read a historical version
    ├── UnknownTopicError              a topic that is not in the registry
    ├── EncodeError                    a message that cannot be encoded
    ├── DecodeError                    bytes that cannot become a valid contract (-> DLQ)
    │   ├── UnknownSchemaError         fingerprint / schema id not known
    │   ├── ContractViolationError     decoded, but the contract rejects it
    │   └── OversizedMessageError      above the consumer's max_event_bytes
    ├── DeliveryError                  the broker did not take a produced message
    ├── ClientStuckError               a Kafka client call blocked past its timeout; the client was given up
    └── KafkaClientError               a Kafka client call failed (librdkafka's error kept as ``error``)
"""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*\n\s*")


class EsperError(Exception):
    """Base of every error Esper raises on purpose; its message is one line."""

    def __str__(self) -> str:
        return _LINE_BREAKS.sub(" ", super().__str__()).strip()


class UsageError(EsperError):
    """Command-line arguments that parse but do not go together (exit code 2)."""


class InputError(EsperError, ValueError):
    """A file or value the user gave (a run config, a blueprint file, a data set) cannot be used."""


class FatalError(EsperError):
    """The service must stop; a supervisor may restart it."""


class ConfigurationError(FatalError):
    pass


class BrokerUnavailableError(FatalError):
    def __init__(self, bootstrap_servers: str, detail: str = "") -> None:
        self.bootstrap_servers = bootstrap_servers
        msg = f"no Kafka broker answered at {bootstrap_servers}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class LocalBrokerError(FatalError):
    pass


class SchemaError(EsperError):
    pass


class SchemaMappingError(SchemaError):
    pass


class SchemaDriftError(SchemaError):
    pass


class SchemaCompatibilityError(SchemaError):
    pass


class UnknownTopicError(EsperError):
    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"unknown topic {topic!r}")


class EncodeError(EsperError):
    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"cannot encode for {topic}: {reason}")


class DecodeError(EsperError):
    """Raised by codecs; the consumer adds where the bytes came from and dead-letters them."""

    def __init__(self, reason: str, *, topic: str = "", partition: int = -1, offset: int = -1) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(reason)


class UnknownSchemaError(DecodeError):
    pass


class ContractViolationError(DecodeError):
    pass


class OversizedMessageError(DecodeError):
    pass


class DeliveryError(EsperError):
    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"delivery to {topic} failed: {reason}")


class ClientStuckError(EsperError):
    """A client call still running past its timeout and grace (librdkafka does not bound every wait, e.g.
    ``send_offsets_to_transaction`` while the group coordinator is unknown); the client was given up."""

    def __init__(self, call: str, waited_s: float) -> None:
        self.call = call
        self.waited_s = waited_s
        super().__init__(f"{call} still blocked after {waited_s:g}s; the client is abandoned")


class KafkaClientError(EsperError):
    """What ``services.oona.clients.map_exceptions`` makes of a ``KafkaException``."""

    def __init__(self, error, message: str) -> None:
        self.error = error  # confluent_kafka.KafkaError, or None when librdkafka gave none
        super().__init__(message)
