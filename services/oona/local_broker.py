"""A single-node Apache Kafka (KRaft) run by the project itself, for hosts without Docker.

The broker's jars are resolved by Maven from Maven Central (``docker/kafka-local/pom.xml``)
into an ignored cache folder; storage is formatted once; data lives in a state folder,
so it survives stop/start. One node is both broker and controller.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import LocalBrokerError
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

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


def _server_properties(cfg: LocalBrokerConfig, log_dir: Path) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={cfg.host}:{cfg.controller_port}",
            f"listeners=PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            f"advertised.listeners=PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={log_dir}",
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
        result = subprocess.run(
            self._java_cmd(java, "kafka.tools.StorageTool", "format", "--standalone",
                           "-t", cluster_id_file.read_text().strip(), "-c", str(self.properties_file)),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LocalBrokerError("formatting Kafka storage failed: " + (result.stdout + result.stderr).strip()[-400:])

    # -- process management ----------------------------------------------------------------------
    def pid(self) -> int | None:
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
        existing = self.pid()
        if existing is not None:
            self._wait_until_ready(existing)
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
        self._wait_until_ready(proc.pid, proc)
        return proc.pid

    def _wait_until_ready(self, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        from services.core.errors import BrokerUnavailableError
        from services.oona.admin import wait_for_broker
        from services.oona.settings import KafkaSettings

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
            "running": pid is not None,
            "pid": pid,
            "bootstrap_servers": self.cfg.bootstrap_servers,
            "answering": self.answering() if pid is not None else False,
            "state_dir": str(self.state_dir),
            "log_file": str(self.log_file),
        }


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
