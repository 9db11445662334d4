"""Running the `esper` command as a user would: a subprocess with a clean Esper environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ESPER = [sys.executable, "-m", "services.cli"]


def esper_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any Esper or Kafka setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ESPER_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")}
    env["PYTHONPATH"] = str(REPO)
    env.update(overrides)
    return env


def run_esper(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ESPER, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    """``stderr`` without the log lines of a broker call that was slow to answer (a loaded machine's
    passing stall, logged as a warning once it lasts ``OffsetReader.SLOW_S``): what the command itself said."""
    slow = ("transient Kafka error", "answered after")
    return [line for line in stderr.strip().splitlines()
            if not (" WARNING services.oona." in line and any(marker in line for marker in slow))]


def run_esper_watching_torch(*args: str, env: dict[str, str], timeout: float = 120
                             ) -> tuple[subprocess.CompletedProcess, bool]:
    """``esper ARGS`` as ``run_esper``, and whether it imported torch (from ``tests/torch_free.py``'s last line)."""
    done = subprocess.run([sys.executable, "-m", "tests.torch_free", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("esper-test: torch imported: "), done.stderr
    done.stderr = "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else "")
    return done, lines[-1].endswith("yes")
