"""The local cluster's layout (ports, folders, quorum) derived from the base settings, the node count
recorded by a start, what `esper status` makes of the brokers, and the quorum's leader read from the
nodes' own files (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.settings import load_settings
from services.cli.status import BrokerState, ClusterView, broker_states
from services.core.errors import ConfigurationError
from services.oona.local_broker import (
    LocalBrokerConfig,
    _server_properties,
    active_controller,
    cluster_layout,
    record_nodes,
)
from tests.unit.test_settings_and_cli import _clean_env, run_cli

BASE = LocalBrokerConfig(state_dir=Path("/s/broker"), cache_dir=Path("/c"), port=9092, controller_port=9093)


def test_one_node_is_the_single_broker_unchanged():
    assert cluster_layout(BASE, 1) == [BASE]
    lines = set(_server_properties(BASE, log_dir=Path("d")).splitlines())
    assert {"node.id=1", "controller.quorum.bootstrap.servers=127.0.0.1:9093"} <= lines
    assert not any(line.startswith(("controller.quorum.voters", "controller.quorum.fetch")) for line in lines)


def test_three_nodes_get_their_own_ports_folders_and_one_quorum():
    nodes = cluster_layout(BASE, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [(1, 9092, 9093), (2, 9094, 9095),
                                                                       (3, 9096, 9097)]
    assert [n.state_dir for n in nodes] == [Path("/s/broker/node-1"), Path("/s/broker/node-2"),
                                            Path("/s/broker/node-3")]
    voters = "controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    for node in nodes:
        lines = set(_server_properties(node, log_dir=Path("d")).splitlines())
        assert {voters, f"node.id={node.node_id}", f"listeners=PLAINTEXT://127.0.0.1:{node.port},"
                f"CONTROLLER://127.0.0.1:{node.controller_port}"} <= lines
        assert not any(line.startswith("controller.quorum.bootstrap.servers") for line in lines)
        assert {"controller.quorum.fetch.timeout.ms=10000", "controller.quorum.election.timeout.ms=3000"} <= lines


@pytest.mark.parametrize("port, controller_port, nodes", [(9092, 9094, 3), (65530, 65531, 4), (9092, 9093, 0),
                                                          (9092, 9093, 10)])
def test_ports_that_overlap_or_run_out_and_impossible_counts_are_refused(port, controller_port, nodes):
    with pytest.raises(ConfigurationError):
        cluster_layout(LocalBrokerConfig(state_dir=Path("s"), cache_dir=Path("c"), port=port,
                                         controller_port=controller_port), nodes)


def test_a_cluster_of_three_gives_clients_every_node_and_three_copies(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ESPER_BROKER__PORT", "29650")
    monkeypatch.setenv("ESPER_BROKER__CONTROLLER_PORT", "29651")
    settings = load_settings(nodes=3)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:29650,127.0.0.1:29652,127.0.0.1:29654"
    assert (settings.kafka.replication_factor, settings.kafka.min_insync_replicas) == (3, 2)
    assert {(n.replication_factor, n.min_insync_replicas) for n in settings.local_brokers()} == {(3, 2)}


def test_the_count_last_started_is_found_again_and_a_setting_or_flag_goes_first(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ESPER_STATE_DIR", str(tmp_path))
    assert load_settings().broker.nodes == 1
    record_nodes(tmp_path / "broker", 3)
    assert load_settings().broker.nodes == 3
    assert load_settings(nodes=1).kafka.bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv("ESPER_BROKER__NODES", "1")
    assert load_settings().broker.nodes == 1


def test_a_replication_the_cluster_cannot_hold_is_refused_in_one_line():
    result = run_cli("broker", "status", "--brokers", "3", ESPER_KAFKA__REPLICATION_FACTOR="4")
    assert result.returncode == 1
    assert "replication factor 4 is more than the cluster's 3 broker(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_local_node_is_up_while_it_runs_and_the_cluster_lists_it():
    view = ClusterView({1: "127.0.0.1:9092", 3: "127.0.0.1:9096"}, controller=3)
    local = [(1, "127.0.0.1:9092", 11), (2, "127.0.0.1:9094", None), (3, "127.0.0.1:9096", None)]
    assert broker_states(view, local) == [BrokerState(1, "127.0.0.1:9092", True, 11),
                                          BrokerState(2, "127.0.0.1:9094", False, None),
                                          BrokerState(3, "127.0.0.1:9096", False, None)]  # listed, but dead
    assert [b.up for b in broker_states(None, local)] == [False, False, False]
    assert broker_states(view, None) == [BrokerState(1, "127.0.0.1:9092", True), BrokerState(3, "127.0.0.1:9096", True)]


def test_the_active_controller_is_the_leader_of_the_newest_epoch_the_nodes_recorded(tmp_path):
    def node(name: str, state: object) -> Path:
        folder = tmp_path / name / "__cluster_metadata-0"
        folder.mkdir(parents=True)
        (folder / "quorum-state").write_text(state if isinstance(state, str) else json.dumps(state))
        return tmp_path / name

    stale = node("a", {"leaderId": 1, "leaderEpoch": 4})
    fresh = node("b", {"leaderId": 2, "leaderEpoch": 5})
    unknown = node("c", {"leaderId": -1, "leaderEpoch": 6})  # an election under way
    torn = node("d", "{not json")
    assert active_controller([stale, fresh, unknown, torn, tmp_path / "missing"]) == 2
    assert active_controller([unknown, torn]) is None
