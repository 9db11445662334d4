"""The edge: the one place Esper reads the environment (``ESPER_`` prefix, ``__`` nesting).

    ESPER_KAFKA__BOOTSTRAP_SERVERS=host:9092     (or plain KAFKA_BOOTSTRAP_SERVERS)
    ESPER_KAFKA__SECURITY_PROTOCOL=SASL_SSL, ESPER_KAFKA__SASL_USERNAME=..., ...
    SCHEMA_REGISTRY_URL=http://registry:8081     (or ESPER_KAFKA__SCHEMA_REGISTRY_URL)
    ESPER_KAFKA__REPLICATION_FACTOR=3, ESPER_KAFKA__MIN_INSYNC_REPLICAS=2   (unset: derived from the cluster)
    ESPER_BROKER__PORT=9092                      the project's own local broker
    ESPER_BROKER__NODES=3                        its node count (unset: the count last started, else 1)
    ESPER_KAFKA__RUN_PARTITIONS=3, ESPER_KAFKA__WORK_PARTITIONS=3   partitions: the unit of scale-out
    ESPER_SERVICES__TAMIYO__INSTANCES=3          processes of a service run by `esper up` (nissa: 1)
    ESPER_STATE_DIR=.state                       broker data, service logs, DuckDB files
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.errors import ConfigurationError
from services.core.paths import DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR
from services.oona.local_broker import MAX_NODES, LocalBrokerConfig, cluster_layout, recorded_nodes
from services.oona.replication import replication_for
from services.oona.settings import KafkaSettings


class BrokerSettings(BaseModel):
    """The project's own Kafka, one node or a local cluster (used when no external cluster is configured)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    controller_port: int = Field(default=9093, ge=1, le=65535)
    heap: str = Field(default="1G", pattern=r"^\d+[mMgG]$")
    start_timeout_s: float = Field(default=90.0, gt=0)
    # Nodes of the local cluster (each broker + controller); the ports and folders of each are derived
    # from the ones above (services.oona.local_broker.cluster_layout). None: the count last started, else 1.
    nodes: int | None = Field(default=None, ge=1, le=MAX_NODES)


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Processes of the service `esper up` runs, one consumer group: they share its partitions, so more
    # instances than the topics' partitions leave the extra ones idle (standing by for a failed one).
    instances: int = Field(default=1, ge=1, le=64)


class ServicesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nissa: ServiceSettings = Field(default_factory=ServiceSettings)
    tamiyo: ServiceSettings = Field(default_factory=ServiceSettings)
    tezzeret: ServiceSettings = Field(default_factory=ServiceSettings)
    urabrask: ServiceSettings = Field(default_factory=ServiceSettings)
    karn: ServiceSettings = Field(default_factory=ServiceSettings)

    @field_validator("nissa")
    @classmethod
    def _one_sink(cls, value: ServiceSettings) -> ServiceSettings:
        if value.instances != 1:
            raise ValueError("Nissa runs as one instance (one writer of its DuckDB file)")
        return value

    def instances(self) -> dict[str, int]:
        return {name: getattr(self, name).instances for name in type(self).model_fields}


class EsperSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESPER_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    # True when the cluster was named explicitly: then Esper never starts its own broker.
    external_cluster: bool = False

    def local_brokers(self) -> list[LocalBrokerConfig]:
        """The config of each node of the local cluster (one by default)."""
        return cluster_layout(self._local_node(), self.broker.nodes or 1)

    def _local_node(self) -> LocalBrokerConfig:
        return LocalBrokerConfig(
            state_dir=self.state_dir / "broker",
            cache_dir=self.cache_dir,
            host=self.broker.host,
            port=self.broker.port,
            controller_port=self.broker.controller_port,
            heap=self.broker.heap,
            start_timeout_s=self.broker.start_timeout_s,
            replication_factor=self.kafka.replication_factor or 1,
            min_insync_replicas=self.kafka.min_insync_replicas or 1,
        )


def load_settings(nodes: int | None = None) -> EsperSettings:
    """Settings from the environment; a bad value raises ConfigurationError naming it.

    ``nodes``: the local cluster's node count asked for on the command line (``--brokers``); it goes
    before ``ESPER_BROKER__NODES``, which goes before the count recorded by the last start.
    """
    env = os.environ
    explicit = "KAFKA_BOOTSTRAP_SERVERS" in env or "ESPER_KAFKA__BOOTSTRAP_SERVERS" in env
    try:
        settings = EsperSettings()
        nodes = nodes or settings.broker.nodes or recorded_nodes(settings.state_dir / "broker") or 1
        broker = BrokerSettings.model_validate({**settings.broker.model_dump(), "nodes": nodes})
        settings = settings.model_copy(update={"broker": broker})
        kafka = settings.kafka.model_dump()
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            kafka["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        elif not explicit:
            # No cluster named: the project's own local cluster is the cluster, so its size and its
            # replication are known now (and a factor it cannot hold is an error now). Clients get
            # every node's address: any one of them down, the others still answer.
            kafka["bootstrap_servers"] = ",".join(node.bootstrap_servers for node in settings.local_brokers())
            local = replication_for(kafka["replication_factor"], kafka["min_insync_replicas"], brokers=nodes)
            kafka.update(replication_factor=local.factor, min_insync_replicas=local.min_insync)
        if "SCHEMA_REGISTRY_URL" in env:
            kafka["schema_registry_url"] = env["SCHEMA_REGISTRY_URL"]
        return settings.model_copy(
            update={"kafka": KafkaSettings.model_validate(kafka), "external_cluster": explicit}
        )
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in ("bootstrap_servers", "schema_registry_url") and len(loc) == 1:
        name = {"bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "schema_registry_url": "SCHEMA_REGISTRY_URL"}[loc[0]]
    else:
        name = "ESPER_" + "__".join(p.upper() for p in loc)
    return f"invalid setting {name}: {first['msg']}"
