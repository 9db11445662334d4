"""Where the files that ship beside the code live: schemas, policies, Docker and broker assets, examples.

Every module asks here instead of counting ``Path(__file__).parents[...]`` from its own place, so moving a
module never loses a data file, and the one assumption behind them all is written once: the project runs
from its checkout (``make venv`` installs it editable; the Docker image copies the same tree to /esper).
The defaults for mutable state (``.state``, ``.cache``) sit here too; settings may move them elsewhere.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SCHEMAS_DIR = REPO_ROOT / "schemas"
"""Avro schemas mirrored from ``contracts/`` (``make schemas``), with ``history/`` of every version."""

DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
# The same with a 3-node Kafka cluster (`esper up --brokers 3` on a Docker host).
COMPOSE_CLUSTER_FILE = DOCKER_DIR / "docker-compose.cluster.yml"
KAFKA_LOCAL_ASSETS = DOCKER_DIR / "kafka-local"
"""The local broker's Maven ``pom.xml`` (which Kafka jars) and its log4j configuration."""

EXAMPLES_DIR = REPO_ROOT / "examples"
DEFAULT_RUN_CONFIG = EXAMPLES_DIR / "spirals-tamiyo.yaml"
"""The run the demo and the load benchmark train."""

TAMIYO_POLICIES_DIR = REPO_ROOT / "services" / "tamiyo" / "policies"
INITIAL_POLICY = TAMIYO_POLICIES_DIR / "initial.json"
"""Tamiyo's shipped policy: JSON metadata beside its ``.safetensors`` weights."""

DEFAULT_STATE_DIR = REPO_ROOT / ".state"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache"
