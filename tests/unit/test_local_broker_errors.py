"""The local broker launcher reports a missing toolchain clearly instead of failing obscurely."""

from __future__ import annotations

import os
import subprocess

from tests.esper_cli import esper_env, run_esper


def test_missing_java_is_one_clear_line(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = esper_env(PATH=str(empty_bin), ESPER_STATE_DIR=str(tmp_path / "state"),
                    ESPER_BROKER__PORT="19392", ESPER_BROKER__CONTROLLER_PORT="19393")
    result = run_esper("broker", "start", env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "esper: error: java not found on PATH: install Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)"
    )


def test_missing_maven_is_one_clear_line(tmp_path):
    java = subprocess.run(["bash", "-c", "command -v java"], capture_output=True, text=True).stdout.strip()
    only_java = tmp_path / "bin"
    only_java.mkdir()
    os.symlink(java, only_java / "java")
    env = esper_env(PATH=str(only_java), ESPER_STATE_DIR=str(tmp_path / "state"),
                    ESPER_CACHE_DIR=str(tmp_path / "empty-cache"),
                    ESPER_BROKER__PORT="19392", ESPER_BROKER__CONTROLLER_PORT="19393")
    result = run_esper("broker", "start", env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("esper: error: mvn not found on PATH: install Maven 3")
