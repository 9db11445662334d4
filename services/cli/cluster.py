"""Which Kafka Esper talks to, and starting it: external cluster, Docker, or the local broker."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from services.core.errors import LocalBrokerError
from services.core.paths import COMPOSE_FILE
from services.oona.admin import wait_for_broker
from services.oona.local_broker import LocalKafka

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
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "up", "-d", "kafka"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalBrokerError("docker compose could not start Kafka: " + result.stderr.strip()[-300:])
    elif mode == "local":
        LocalKafka(settings.local_broker()).start()
    brokers = wait_for_broker(settings.kafka, timeout_s=max(settings.kafka.connect_timeout_s, 60))
    return f"{mode} cluster at {settings.kafka.bootstrap_servers} ({brokers} broker(s))"


def stop_cluster(settings: EsperSettings) -> str:
    mode = cluster_mode(settings)
    if mode == "external":
        return "external cluster configured: nothing local to stop"
    if mode == "docker":
        subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "stop"], capture_output=True, text=True)
        return "docker kafka stopped (volume kept)"
    stopped = LocalKafka(settings.local_broker()).stop()
    return "kafka stopped (data kept)" if stopped else "kafka was not running"
