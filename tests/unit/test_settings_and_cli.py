"""Settings come from the environment at the edge; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from services.cli.settings import load_settings
from services.core.errors import ConfigurationError
from tests.esper_cli import esper_env, run_esper


def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("ESPER_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL"):
            monkeypatch.delenv(name)
    # A fresh state folder: no local cluster recorded by a developer's own `esper broker start --brokers N`.
    monkeypatch.setenv("ESPER_STATE_DIR", tempfile.mkdtemp(prefix="esper-unit-state-"))


def test_defaults_point_at_the_local_broker(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ESPER_BROKER__PORT", "29092")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:29092"
    assert not settings.external_cluster
    assert settings.kafka.schema_registry_url is None


def test_external_cluster_and_security_settings(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("ESPER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ESPER_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ESPER_KAFKA__SASL_USERNAME", "esper")
    monkeypatch.setenv("ESPER_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("ESPER_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "https://registry:8081")
    settings = load_settings()
    assert settings.external_cluster
    config = settings.kafka.client_config()
    assert config["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.password"] == "s3cret"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert "s3cret" not in repr(settings), "secrets must not leak into logs"
    assert settings.kafka.schema_registry_url == "https://registry:8081"


def test_partition_counts_and_instances_per_deployment(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ESPER_KAFKA__RUN_PARTITIONS", "6")
    monkeypatch.setenv("ESPER_KAFKA__WORK_PARTITIONS", "2")
    monkeypatch.setenv("ESPER_SERVICES__TAMIYO__INSTANCES", "3")
    monkeypatch.setenv("ESPER_SERVICES__TEZZERET__INSTANCES", "2")
    settings = load_settings()
    assert (settings.kafka.run_partitions, settings.kafka.work_partitions) == (6, 2)
    assert settings.services.instances() == {"nissa": 1, "tamiyo": 3, "tezzeret": 2, "urabrask": 1, "karn": 1}


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "no-port", "invalid setting KAFKA_BOOTSTRAP_SERVERS"),
        ("SCHEMA_REGISTRY_URL", "registry:8081", "invalid setting SCHEMA_REGISTRY_URL"),
        ("ESPER_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON", "invalid setting ESPER_KAFKA__SECURITY_PROTOCOL"),
        ("ESPER_BROKER__PORT", "99999", "invalid setting ESPER_BROKER__PORT"),
        ("ESPER_KAFKA__RUN_PARTITIONS", "0", "invalid setting ESPER_KAFKA__RUN_PARTITIONS"),
        ("ESPER_SERVICES__NISSA__INSTANCES", "2", "invalid setting ESPER_SERVICES__NISSA.*one instance"),
        ("ESPER_SERVICES__TAMIYO__INSTANCES", "0", "invalid setting ESPER_SERVICES__TAMIYO__INSTANCES"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, name, value, fragment):
    _clean_env(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=fragment):
        load_settings()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_esper(*args, env=esper_env(**env), timeout=60)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (("tail", "no.such.topic"), {}, "esper: error: unknown topic 'no.such.topic'"),
        (
            ("topics", "create"),
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "ESPER_KAFKA__CONNECT_TIMEOUT_S": "1"},
            "esper: error: no Kafka broker answered at 127.0.0.1:9",
        ),
        (
            ("topics", "list"),
            {"KAFKA_BOOTSTRAP_SERVERS": "oops"},
            "esper: error: invalid setting KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            ("tail", "telemetry.seed.health"),
            {"SCHEMA_REGISTRY_URL": "registry"},
            "esper: error: invalid setting SCHEMA_REGISTRY_URL",
        ),
        (("broker", "status"), {"ESPER_BROKER__HEAP": "lots"}, "esper: error: invalid setting ESPER_BROKER__HEAP"),
    ],
)
def test_bad_input_gives_one_line_and_non_zero_exit(args, env, fragment):
    result = run_cli(*args, **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(fragment), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "config, fragment",
    [
        (
            "seeds: {target_layers: [body.7]}\n",
            "seeds.target_layers: unknown layer path(s) body.7; seedable layers: body.0, head",
        ),
        ("epochs: -1\n", "epochs: Input should be greater than or equal to 1"),
        ("model: {kind: cnn}\ndata: {dataset: spirals}\n", "data: the spirals task is 2-D points"),
        ("policy_version: latest\n", "policy_version: String should match pattern"),
    ],
)
def test_bad_run_configs_fail_before_touching_the_cluster(tmp_path, config, fragment):
    path = tmp_path / "run.yaml"
    path.write_text(config)
    result = run_cli("run", str(path), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", ESPER_STATE_DIR=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("esper: error: ") and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_arguments_that_do_not_go_together(tmp_path):
    result = run_cli("run", "x.yaml", "--resume", "r1", ESPER_STATE_DIR=str(tmp_path))
    assert result.returncode == 2 and "--resume RUN_ID takes no CONFIG" in result.stderr
    result = run_cli("run", "--resume", "r1", "--policy", "gnn-0123456789ab", ESPER_STATE_DIR=str(tmp_path))
    assert result.returncode == 2 and "--policy" in result.stderr
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\n")
    result = run_cli("run", str(config), "--policy", "latest", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
                     ESPER_STATE_DIR=str(tmp_path))  # refused before any broker is asked
    assert result.returncode == 1 and "policy version 'latest' is not one" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run_cli("run", "--resume", "nope", ESPER_STATE_DIR=str(tmp_path))
    assert missing.returncode == 1 and "no checkpoint at" in missing.stderr


@pytest.mark.parametrize("args, fragment", [(("broker", "explode"), "invalid choice: 'explode'"),
                                            (("policy", "bootstrap", "--hidden", "0"), "--hidden must be at least 1"),
                                            (("policy", "promote"), "policy promote needs a VERSION"),
                                            (("policy", "publish"), "policy publish needs the policy FILE")])
def test_bad_arguments_exit_2_with_usage(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_schemas_check_passes_on_the_committed_tree():
    result = run_cli("schemas", "check")
    assert result.returncode == 0, result.stderr
    assert "schemas match the contracts" in result.stdout
