"""Apache Kafka (KRaft) run by the project itself, for hosts without Docker: one node, or a cluster of several.

The broker's jars are resolved by Maven from Maven Central (``docker/kafka-local/pom.xml``)
into an ignored cache folder; storage is formatted once; data lives in a state folder,
so it survives stop/start. Every node is both broker and controller (combined mode): one node
is its own quorum; the nodes of a cluster are the quorum's voters, so losing one of three
leaves a controller majority and a broker majority alike.

The layout of a cluster of N nodes is derived from the two base ports: node i (1..N) listens on
``port + 2(i-1)`` (clients) and ``controller_port + 2(i-1)`` (quorum), and keeps its data in
``node-i/`` under the broker's state folder; one node keeps the single-node layout (the base
ports, the state folder itself). The node count of the cluster last started is recorded there
(``nodes``), so later commands find the cluster without being told again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import ConfigurationError, LocalBrokerError
from services.core.paths import KAFKA_LOCAL_ASSETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalBrokerConfig:
    state_dir: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "1G"
    start_timeout_s: float = 90.0
    # Kafka's internal topics (consumer offsets, transaction state) are replicated like Esper's own
    # (services.oona.replication); one node can hold only one copy.
    replication_factor: int = 1
    min_insync_replicas: int = 1
    node_id: int = 1
    # The quorum's voters, (node id, controller port) each, when this node is one of several; empty: alone.
    voters: tuple[tuple[int, int], ...] = ()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


def _server_properties(cfg: LocalBrokerConfig, log_dir: Path) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={cfg.node_id}",
            # A static quorum of known voters for a cluster; one node bootstraps its own (dynamic) quorum.
            (f"controller.quorum.voters={','.join(f'{node}@{cfg.host}:{port}' for node, port in cfg.voters)}"
             if cfg.voters else f"controller.quorum.bootstrap.servers={cfg.host}:{cfg.controller_port}"),
            f"listeners=PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            f"advertised.listeners=PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={log_dir}",
            # A cluster's quorum on one host: more patience than Kafka's 2 s / 1 s defaults. With one node
            # killed, the leader of the two left resigns when the other's fetch is 1.5 fetch-timeouts late,
            # and on a loaded 2-core machine (load 60-440) it was, again and again: no stable controller,
            # so no new partition leaders, for up to 3 min (README "On the local 3-node cluster"). The cost:
            # the active controller's own loss is noticed after 10 s, not 2 s.
            *(["controller.quorum.fetch.timeout.ms=10000", "controller.quorum.election.timeout.ms=3000"]
              if cfg.voters else []),
            "num.partitions=3",
            # The internal topics get the deployment's replication: a factor above the broker count
            # would leave them uncreated and transactions hanging.
            f"offsets.topic.replication.factor={cfg.replication_factor}",
            f"transaction.state.log.replication.factor={cfg.replication_factor}",
            f"transaction.state.log.min.isr={cfg.min_insync_replicas}",
            f"share.coordinator.state.topic.replication.factor={cfg.replication_factor}",
            f"share.coordinator.state.topic.min.isr={cfg.min_insync_replicas}",
            f"default.replication.factor={cfg.replication_factor}",
            f"min.insync.replicas={cfg.min_insync_replicas}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            f"message.max.bytes={10 * 1024 * 1024}",
            "log.retention.hours=-1",
            "",
        ]
    )


class LocalKafka:
    def __init__(self, cfg: LocalBrokerConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.log_dir = self.state_dir / "data"
        self.pid_file = self.state_dir / "broker.pid"
        self.log_file = self.state_dir / "broker.log"
        self.properties_file = self.state_dir / "server.properties"
        self._process: subprocess.Popen[bytes] | None = None

    # -- toolchain -------------------------------------------------------------------------------
    @staticmethod
    def _require(tool: str, hint: str) -> str:
        path = shutil.which(tool)
        if path is None:
            raise LocalBrokerError(f"{tool} not found on PATH: {hint}")
        return path

    def _check_java(self) -> str:
        java = self._require("java", "install Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)")
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        match = re.search(r'version "(\d+)', out)
        if match and int(match.group(1)) < 17:
            raise LocalBrokerError(f"Kafka 4 needs Java 17 or newer, found: {out.splitlines()[0]}")
        return java

    def libs_dir(self) -> Path:
        return Path(self.cfg.cache_dir) / "kafka-libs"

    def resolve_jars(self) -> Path:
        """Resolve the broker's jars with Maven (once; later calls reuse the cache folder)."""
        libs = self.libs_dir()
        pom = KAFKA_LOCAL_ASSETS / "pom.xml"
        marker = libs / ".resolved"
        if marker.exists() and marker.read_text() == pom.read_text():
            return libs
        mvn = self._require("mvn", "install Maven 3 (e.g. apt-get install maven) so the broker jars can be resolved")
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        log.info("resolving Kafka jars with Maven into %s", libs)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise LocalBrokerError("Maven could not resolve the Kafka jars: " + " | ".join(tail))
        marker.write_text(pom.read_text())
        return libs

    def _java_cmd(self, java: str, main: str, *args: str, heap: str | None = None) -> list[str]:
        cmd = [java]
        if heap:
            cmd += [f"-Xmx{heap}", f"-Xms{heap}"]
        cmd += [
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOCAL_ASSETS / 'log4j2.properties'}",
            "-cp", str(self.libs_dir() / "*"),
            main, *args,
        ]
        return cmd

    def _format_storage(self, java: str) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        cluster_id_file = self.state_dir / "cluster.id"
        if not cluster_id_file.exists():
            # Kafka's random-uuid is a base64url of 16 random bytes; same as uuid4 encoded so.
            cluster_id_file.write_text(_kafka_uuid())
        # One node formats itself as a standalone quorum; a cluster's voters are in its properties.
        quorum = [] if self.cfg.voters else ["--standalone"]
        result = subprocess.run(
            self._java_cmd(java, "kafka.tools.StorageTool", "format", *quorum,
                           "-t", cluster_id_file.read_text().strip(), "-c", str(self.properties_file)),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LocalBrokerError("formatting Kafka storage failed: " + (result.stdout + result.stderr).strip()[-400:])

    # -- process management ----------------------------------------------------------------------
    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid  # launched here and alive (mid exec, /proc may not name kafka.Kafka yet)
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        # A recycled pid would not be running our broker.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"kafka.Kafka" not in cmdline:
                return None
        except OSError:
            pass
        return pid

    def _port_open(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.cfg.host, port)) == 0

    def answering(self) -> bool:
        return self._port_open(self.cfg.port)

    def start(self) -> int:
        """Start the broker (if not running) and wait until it accepts connections."""
        pid = self.launch()
        self.wait_until_ready()
        return pid

    def launch(self) -> int:
        """Start the broker process (if not running) without waiting for it: a cluster's nodes answer
        only once a majority of the quorum is up, so they are launched together, then waited on."""
        existing = self.pid()
        if existing is not None:
            return existing
        for port in (self.cfg.port, self.cfg.controller_port):
            if self._port_open(port):
                raise LocalBrokerError(
                    f"port {port} on {self.cfg.host} is taken by another process; "
                    "stop it or choose other ports (ESPER_BROKER__PORT / ESPER_BROKER__CONTROLLER_PORT)"
                )
        java = self._check_java()
        self.resolve_jars()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(_server_properties(self.cfg, self.log_dir))
        self._format_storage(java)
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                self._java_cmd(java, "kafka.Kafka", str(self.properties_file), heap=self.cfg.heap),
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it
            )
        # Keep the handle: dropping a running Popen warns, and stop() reaps through it.
        self._process = proc
        self.pid_file.write_text(str(proc.pid))
        log.info("local Kafka starting pid=%d bootstrap=%s", proc.pid, self.cfg.bootstrap_servers)
        return proc.pid

    def wait_until_ready(self) -> None:
        """Until this node answers a metadata request (within the start timeout)."""
        from services.core.errors import BrokerUnavailableError
        from services.oona.admin import wait_for_broker
        from services.oona.settings import KafkaSettings

        pid, proc = self.pid(), self._process
        if pid is None:
            raise LocalBrokerError(f"Kafka node {self.cfg.node_id} is not running: {self._log_tail()}")
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while not self.answering():
            if proc is not None and proc.poll() is not None:
                raise LocalBrokerError(f"Kafka exited with code {proc.returncode} during start-up: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise LocalBrokerError(f"Kafka did not open port {self.cfg.port} within "
                                       f"{self.cfg.start_timeout_s:g}s: {self._log_tail()}")
            time.sleep(0.2)
        try:
            wait_for_broker(KafkaSettings(bootstrap_servers=self.cfg.bootstrap_servers),
                            timeout_s=max(1.0, deadline - time.monotonic()))
        except BrokerUnavailableError as exc:
            raise LocalBrokerError(f"Kafka (pid {pid}) is not answering: {exc}") from None

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "no broker log"
        errors = [line for line in text if " ERROR " in line or "Exception" in line]
        return " | ".join((errors or text)[-lines:]) or "empty broker log"

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop gracefully (SIGTERM, then SIGKILL after the timeout). False if not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout_s):
            log.warning("Kafka pid=%d ignored SIGTERM for %gs; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 10)
        self.pid_file.unlink(missing_ok=True)
        self._reap()
        return True

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> bool:
        """SIGKILL the broker (fault-injection tests)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, 10)
        self._reap()
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "node": self.cfg.node_id,
            "running": pid is not None,
            "pid": pid,
            "bootstrap_servers": self.cfg.bootstrap_servers,
            "answering": self.answering() if pid is not None else False,
            "state_dir": str(self.state_dir),
            "log_file": str(self.log_file),
        }


# Node counts a local cluster may have: 1 (the default), or a quorum that survives the loss of a node.
MAX_NODES = 9
NODES_RECORD = "nodes"


def cluster_layout(base: LocalBrokerConfig, nodes: int) -> list[LocalBrokerConfig]:
    """The configs of a local cluster of ``nodes`` nodes built around ``base`` (the single node's config).

    One node is ``base`` itself, unchanged. Node i of several gets the ports ``port + 2(i-1)`` and
    ``controller_port + 2(i-1)`` (so the defaults 9092/9093 give 9092..9097, each node a client port
    and the next one its controller port) and the data folder ``node-i`` under the state folder.
    """
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigurationError(f"a local cluster has 1 to {MAX_NODES} nodes, not {nodes}")
    if nodes == 1:
        return [base]
    ports = [(i, base.port + 2 * (i - 1), base.controller_port + 2 * (i - 1)) for i in range(1, nodes + 1)]
    every = [port for _, client, controller in ports for port in (client, controller)]
    if len(set(every)) != len(every) or max(every) > 65535:
        raise ConfigurationError(
            f"the ports of {nodes} nodes from port {base.port} and controller port {base.controller_port} "
            "overlap or pass 65535; set ESPER_BROKER__CONTROLLER_PORT to ESPER_BROKER__PORT + 1"
        )
    voters = tuple((i, controller) for i, _, controller in ports)
    return [dataclasses.replace(base, state_dir=Path(base.state_dir) / f"node-{i}", port=client,
                                controller_port=controller, node_id=i, voters=voters)
            for i, client, controller in ports]


def recorded_nodes(broker_state_dir: Path) -> int | None:
    """The node count of the local cluster last started from this state folder (None: none recorded)."""
    try:
        return int((Path(broker_state_dir) / NODES_RECORD).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def record_nodes(broker_state_dir: Path, nodes: int) -> None:
    """Record the node count of the cluster being started, for the commands after it."""
    Path(broker_state_dir).mkdir(parents=True, exist_ok=True)
    (Path(broker_state_dir) / NODES_RECORD).write_text(f"{nodes}\n")


def active_controller(log_dirs: Iterable[Path]) -> int | None:
    """The quorum's leader as the nodes with these data folders last saw it (their ``quorum-state``
    files, newest epoch first); None when none of them knows one.

    Kafka's clients cannot ask the quorum (in KRaft the metadata a broker answers names a random
    broker as "controller"), so the local cluster reads what its own running nodes wrote.
    """
    best: tuple[int, int] | None = None
    for log_dir in log_dirs:
        try:
            state = json.loads((Path(log_dir) / "__cluster_metadata-0" / "quorum-state").read_text())
            leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if leader >= 0 and (best is None or epoch > best[1]):
            best = (leader, epoch)
    return best[0] if best else None


class LocalCluster:
    """The nodes of the local cluster, started, stopped and reported together."""

    def __init__(self, nodes: list[LocalBrokerConfig]) -> None:
        self.nodes = [LocalKafka(cfg) for cfg in nodes]
        # The state folder of the broker (of one node, or the parent of a cluster's node folders).
        self.state_dir = Path(nodes[0].state_dir) if len(nodes) == 1 else Path(nodes[0].state_dir).parent

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.cfg.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return next(node for node in self.nodes if node.cfg.node_id == node_id)

    def start(self) -> list[int]:
        """Start every node not running, and wait until each answers; the pids."""
        record_nodes(self.state_dir, len(self.nodes))
        cluster_id = self.state_dir / "cluster.id"
        if len(self.nodes) > 1:  # one id for every node of the cluster
            if not cluster_id.exists():
                cluster_id.write_text(_kafka_uuid())
            for node in self.nodes:
                node.state_dir.mkdir(parents=True, exist_ok=True)
                if not (node.state_dir / "cluster.id").exists():
                    shutil.copyfile(cluster_id, node.state_dir / "cluster.id")
        pids = [node.launch() for node in self.nodes]
        for node in self.nodes:
            node.wait_until_ready()
        return pids

    def stop(self) -> int:
        """Stop every running node; how many were running.

        All are told at once: stopped one by one, the last nodes would wait for a quorum already gone.
        """
        running = [(node, pid) for node in self.nodes if (pid := node.pid()) is not None]
        for _, pid in running:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile: stop() below agrees
                os.kill(pid, signal.SIGTERM)
        for node, _ in running:
            node.stop()
        return len(running)

    def status(self) -> list[dict[str, object]]:
        return [node.status() for node in self.nodes]

    def active_controller(self) -> int | None:
        return active_controller(node.log_dir for node in self.nodes if node.pid() is not None)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child, so it does not linger as a zombie.
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.1)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _kafka_uuid() -> str:
    import base64

    while True:  # like Kafka's Uuid.randomUuid: never start with '-', the tools would read it as an option
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value
