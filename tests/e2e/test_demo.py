"""`esper up` + `esper demo` on a fresh state folder, asserted from Nissa's DuckDB (runs before the fault cases)."""

from __future__ import annotations

import re
from pathlib import Path

TABLES = ("training_session_event", "health_signal", "epoch_completed", "adaptation_decision", "kasmina_command",
          "seed_transition", "field_report", "blueprint_submitted", "kernel_ready", "kernel_characterized",
          "compiled_kernel")


def test_demo_runs_end_to_end_and_every_fact_is_queryable(system):
    demo = system.esper("demo", "--epochs", "16", timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    print(demo.stdout[-1500:])
    adaptive_id = re.search(r"adaptive run (demo-\w+) ", demo.stdout).group(1)
    assert "adaptive vs baseline" in demo.stdout
    report = re.search(r"report: (\S+\.html)", demo.stdout).group(1)
    assert "data:image/png;base64," in Path(report).read_text(encoding="utf-8")

    counts = {t: system.sql(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}
    print(counts)
    assert all(n > 0 for n in counts.values()), counts
    runs = {r["run_id"]: r for r in system.sql("SELECT * FROM runs")}
    assert runs[adaptive_id]["status"] == "completed" and runs[adaptive_id + "-noadapt"]["status"] == "completed"
    assert runs[adaptive_id]["seeds_germinated"] >= 1 and runs[adaptive_id + "-noadapt"]["seeds_germinated"] == 0
    # Decisions joined to the transitions they caused and the field reports that closed the seeds' lives.
    history = system.sql(f"SELECT * FROM adaptation_history WHERE run_id = '{adaptive_id}'")
    assert history, "no adaptation history for the adaptive run"
    joined = [h for h in history if h.get("to_state") and h.get("field_outcome")]
    assert joined, history
    unique = system.sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM health_signal")[0]
    assert unique["n"] == unique["d"]
