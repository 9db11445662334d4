"""Start-up of commands that neither train nor decide, beside a bare ``python -c pass`` on the same machine.

Each command runs in a fresh interpreter, ``RUNS`` times, alternating with the bare interpreter so that load
on the machine hits both alike; the medians are compared. The goal is "well under a second": the commands
must not pay for torch (tests/unit/test_cli_start_up.py asserts the import itself).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from services.bench.results import BenchResult

RUNS = 7
TARGET_SECONDS = 1.0


def _seconds(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=True, timeout=120)
    return time.perf_counter() - start


def bench_start_up(repo: Path) -> list[BenchResult]:
    """``esper --help`` and ``esper sql`` on a small database: median wall seconds vs bare Python."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "nissa.duckdb"
        with duckdb.connect(str(db)) as con:
            con.execute("CREATE TABLE t AS SELECT 1 AS x")
        bare = [sys.executable, "-c", "pass"]
        commands = {"esper --help": ["--help"], "esper sql": ["sql", "--db", str(db), "SELECT count(*) FROM t"]}
        times: dict[str, list[float]] = {"bare": [], **{name: [] for name in commands}}
        for _ in range(RUNS):
            times["bare"].append(_seconds(bare, repo))
            for name, args in commands.items():
                times[name].append(_seconds([sys.executable, "-m", "services.cli", *args], repo))
    bare_s = statistics.median(times["bare"])
    return [BenchResult(f"start-up: {name}", "s", statistics.median(times[name]), "python -c pass", bare_s,
                        higher_is_better=False, target=TARGET_SECONDS,
                        details={"runs": RUNS, "min_s": round(min(times[name]), 3)})
            for name in commands]
