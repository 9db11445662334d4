"""Settings of the bus layer. Plain values only: the environment is read at the edge
(``services.cli.settings``), never here."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.oona.topic_registry import RUN_PARTITIONS, WORK_PARTITIONS

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]


class KafkaSettings(BaseModel):
    """How to reach the cluster. SASL/TLS options are passed through to librdkafka."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    client_id: str = Field(default="esper", min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    schema_registry_url: str | None = None
    # Prepended to every topic name: several Esper deployments (or test runs) share one cluster.
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    # Consumers dead-letter any value larger than this (bytes).
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Seconds to wait for the cluster to answer before giving up with a clear error.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Extra librdkafka properties, e.g. {"socket.keepalive.enable": "true"}.
    librdkafka: dict[str, str] = Field(default_factory=dict)
    # Copies of every partition of the topics Esper creates, and how many must be in sync for a write
    # (the topic config min.insync.replicas). None: derived from the cluster's broker count,
    # 3 / 2 on 3 brokers or more, 1 / 1 below (services.oona.replication).
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    # Partitions of the run-scoped topics (co-partitioned: all the same count) and of the innovation plane's
    # work topics (blueprints submitted, kernels ready, kernels characterised). The partitions are the unit of
    # scale-out: a consumer group shares them out, so at most this many instances of Tamiyo (runs) or of
    # Tezzeret / Urabrask (work) are busy. Kafka can add partitions but never remove them (admin.ensure_topics).
    run_partitions: int = Field(default=RUN_PARTITIONS, ge=1, le=1000)
    work_partitions: int = Field(default=WORK_PARTITIONS, ge=1, le=1000)
    # A consumer of a group that has had no partitions this long asks the broker whether it is still a member;
    # when it is not (librdkafka did not rejoin), it is re-created, and so rejoins (``OonaConsumer``).
    rejoin_after_s: float = Field(default=60.0, gt=0)

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts_have_ports(cls, value: str) -> str:
        for host in value.split(","):
            name, _, port = host.strip().rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"bootstrap server {host.strip()!r} must be host:port")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://", "mock://")):
            raise ValueError(f"must start with http://, https:// or mock://, got {value!r}")
        return value or None

    @model_validator(mode="after")
    def _in_sync_within_factor(self) -> KafkaSettings:
        factor, in_sync = self.replication_factor, self.min_insync_replicas
        if factor is not None and in_sync is not None and in_sync > factor:
            raise ValueError(f"min_insync_replicas {in_sync} is more than replication_factor {factor}")
        return self

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties shared by producers, consumers and admin clients."""
        config: dict[str, Any] = {
            # librdkafka's own log lines go through Python logging, not raw stderr.
            "logger": logging.getLogger("librdkafka"),
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            # When every broker it knows is down at once (one broker restarting), librdkafka >= 2.10
            # "re-bootstraps": it decommissions the brokers it learned. A group coordinator cached on
            # one of them is never looked up again, and send_offsets_to_transaction then waits for it
            # without end (librdkafka #5511 with #5456; README "Transactions after a broker restart").
            # Without it the client reconnects to the brokers it knows, as before 2.10.
            "metadata.recovery.strategy": "none",
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        config.update(self.librdkafka)
        return config
