"""The whole system as a user runs it: `esper up` on a fresh state folder and its own broker port.

The cases share one system and run in this order: the demo, the poison soak (it asserts that no
service ever restarted, so it comes before the cases that kill services), then the fault cases.
The cluster's fault cases and its scale-out case run first, each module on a system of its own (a
local 3-node cluster on its own ports), which is down before the next one starts: never two systems
on the machine at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.oona.settings import KafkaSettings
from tests.esper_cli import esper_env, run_esper

E2E_BROKER_PORT = int(os.environ.get("ESPER_E2E_BROKER_PORT", "19292"))
# The 3-node cluster's base port: its nodes listen on base, base + 2, base + 4 (controllers one above each).
E2E_CLUSTER_PORT = int(os.environ.get("ESPER_E2E_CLUSTER_PORT", str(E2E_BROKER_PORT + 10)))
MODULE_ORDER = ("test_cluster_faults", "test_scale_out", "test_demo", "test_poison_soak", "test_faults")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: the order within a module stands


@dataclass
class System:
    env: dict[str, str]
    state_dir: Path

    def esper(self, *args: str, timeout: float = 300):
        return run_esper(*args, env=self.env, timeout=timeout)

    def sql(self, query: str) -> list[dict]:
        result = self.esper("sql", query, "--format", "json", timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    nodes: int = 1

    @property
    def kafka(self) -> KafkaSettings:
        """Every node's address, as the system's own services get them."""
        port = int(self.env["ESPER_BROKER__PORT"])
        return KafkaSettings(bootstrap_servers=",".join(f"127.0.0.1:{port + 2 * i}" for i in range(self.nodes)))

    def status(self) -> dict:
        """The supervisor's view: each service's pid and restart count."""
        return json.loads((self.state_dir / "supervisor.json").read_text())

    def restarts(self) -> dict[str, int]:
        return {name: info["restarts"] for name, info in self.status()["services"].items()}

    def strict_status(self, timeout_s: float = 120) -> tuple[int, dict]:
        """`esper status --json --strict`: (exit code, its JSON). On a loaded machine the command may
        print its answer and then be slow to exit; the answer carries the exit code too."""
        try:
            result = self.esper("status", "--json", "--strict", timeout=timeout_s)
            return result.returncode, json.loads(result.stdout)
        except subprocess.TimeoutExpired as exc:
            out = exc.output.decode() if isinstance(exc.output, bytes) else exc.output or ""
            try:
                report = json.loads(out)
            except ValueError:
                return -1, {"services": [], "error": f"esper status gave no answer within {timeout_s:.0f}s"}
            return report["exit"], report

    def wait_all_up(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (result := self.esper("status", timeout=60)).returncode != 0:
            assert time.monotonic() < deadline, result.stdout + result.stderr
        assert "lag" in result.stdout

    def wait_for_kernels(self, input_shape: list[int], output_shape: list[int], timeout_s: float = 300) -> int:
        deadline = time.monotonic() + timeout_s
        shape = ["--input-shape", "x".join(map(str, input_shape)), "--output-shape", "x".join(map(str, output_shape))]
        while True:
            listed = self.esper("kernels", "list", *shape, timeout=120)
            found = int(re.search(r"(\d+) kernel\(s\)", listed.stdout).group(1)) if listed.returncode == 0 else 0
            if found:
                return found
            assert time.monotonic() < deadline, f"no kernel for {input_shape} -> {output_shape}: {listed.stderr}"


@contextlib.contextmanager
def running_system(state: Path, port: int, nodes: int = 1, heap: str = "768m",
                   **settings: str) -> Iterator[System]:
    """`esper up` on a fresh state folder (its broker: ``nodes`` nodes from ``port``), until `esper down`;
    ``settings``: more of its environment (e.g. ``ESPER_SERVICES__TAMIYO__INSTANCES="3"``)."""
    env = esper_env(ESPER_BROKER__PORT=str(port), ESPER_BROKER__CONTROLLER_PORT=str(port + 1),
                    ESPER_BROKER__HEAP=heap, ESPER_STATE_DIR=str(state), **settings)
    system = System(env, state, nodes)
    up = system.esper("up", "--brokers", str(nodes), timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        system.wait_all_up()
        system.wait_for_kernels([2], [8])  # the examples' slot: Karn -> Tezzeret -> Urabrask
        yield system
    finally:
        down = system.esper("down", timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="session")
def system(tmp_path_factory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("e2e") / "state", E2E_BROKER_PORT) as system:
        yield system


def vm_rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/PID/status), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
