"""Which Kafka Esper talks to, and starting it: external cluster, Docker, or the local broker."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from services.core.errors import LocalBrokerError
from services.core.paths import COMPOSE_CLUSTER_FILE, COMPOSE_FILE
from services.oona.admin import wait_for_broker
from services.oona.local_broker import LocalCluster, record_nodes

if TYPE_CHECKING:
    from services.cli.settings import EsperSettings


def docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cluster_mode(settings: EsperSettings) -> str:
    if settings.external_cluster:
        return "external"
    return "docker" if docker_engine_answers() else "local"


def ensure_cluster(settings: EsperSettings) -> str:
    """Start the cluster if it is ours to start; returns a one-line description."""
    mode = cluster_mode(settings)
    if mode == "docker":
        result = subprocess.run(["docker", "compose", "-f", str(compose_file(settings)), "up", "-d",
                                 *kafka_services(settings)], capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalBrokerError("docker compose could not start Kafka: " + result.stderr.strip()[-300:])
        record_nodes(settings.state_dir / "broker", settings.broker.nodes or 1)
    elif mode == "local":
        LocalCluster(settings.local_brokers()).start()
    brokers = wait_for_broker(settings.kafka, timeout_s=max(settings.kafka.connect_timeout_s, 60))
    return f"{mode} cluster at {settings.kafka.bootstrap_servers} ({brokers} broker(s))"


def stop_cluster(settings: EsperSettings) -> str:
    mode = cluster_mode(settings)
    if mode == "external":
        return "external cluster configured: nothing local to stop"
    if mode == "docker":
        subprocess.run(["docker", "compose", "-f", str(compose_file(settings)), "stop"], capture_output=True, text=True)
        return "docker kafka stopped (volume kept)"
    stopped = LocalCluster(settings.local_brokers()).stop()
    if not stopped:
        return "kafka was not running"
    return "kafka stopped (data kept)" if stopped == 1 else f"kafka stopped, {stopped} nodes (data kept)"


def compose_file(settings: EsperSettings):
    """The compose file of the cluster's size: one broker, or the 3-node cluster (same ports as the local one)."""
    nodes = settings.broker.nodes or 1
    if nodes not in (1, 3):
        raise LocalBrokerError(f"the docker compose files hold 1 or 3 Kafka nodes, not {nodes}; "
                               "without Docker, `esper broker start --brokers N` runs any count")
    return COMPOSE_FILE if nodes == 1 else COMPOSE_CLUSTER_FILE


def kafka_services(settings: EsperSettings) -> list[str]:
    nodes = settings.broker.nodes or 1
    return ["kafka"] if nodes == 1 else [f"kafka-{i}" for i in range(1, nodes + 1)]
