"""`esper demo`: an adaptive run and its --no-adapt baseline on a running system, compared from SQL.

1. checks that the system is up (`esper up`): broker, Tamiyo and Nissa;
2. waits until Urza's catalogue has characterised kernels for every seed slot of the config
   (submitting the starter blueprints for slots Karn does not seed by default);
3. runs the config with Tamiyo in charge, then the same config with --no-adapt;
4. waits until Nissa has both runs in DuckDB, prints the comparison from SQL, writes the report.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from services.core.errors import EsperError


class DemoError(EsperError):
    pass


COMPARISON = """
SELECT r.run_id, r.status, r.epochs, r.seeds_germinated AS germinated, r.seeds_fossilized AS fossilized,
       r.seeds_culled AS culled, round(r.final_validation_accuracy, 4) AS final_val_acc,
       (SELECT max(parameter_count) FROM epoch_completed e WHERE e.run_id = r.run_id) AS parameters,
       (SELECT count(*) FROM adaptation_decision d WHERE d.run_id = r.run_id AND {action} IS NOT NULL)
         AS tamiyo_actions
FROM runs r WHERE r.run_id IN ({ids}) ORDER BY r.run_id = '{adaptive}' DESC
"""


def _wait(condition, timeout_s: float, what: str, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)  # polling the catalogue / DuckDB file, which offer no notification


def run_demo(config: Path, *, epochs: int | None = None, report: Path | None = None,
             kernel_wait_s: float = 180.0) -> int:
    from services.blueprints.starter import for_slot
    from services.cli.settings import load_settings
    from services.cli.supervisor import read_status
    from services.karn.service import submit
    from services.nissa.queries import run_query, write_result
    from services.nissa.report import write_report
    from services.nissa.sink import default_db_path
    from services.nissa.views import decision_action_sql
    from services.oona.admin import wait_for_broker
    from services.oona.codec import make_codec
    from services.tolaria.config import load_config
    from services.tolaria.run import TolariaRun, start_run
    from services.urza.catalog import load_catalog

    settings = load_settings()
    wait_for_broker(settings.kafka)
    status = read_status(settings.state_dir)
    down = [n for n in ("tamiyo", "nissa") if not (status or {}).get("services", {}).get(n, {}).get("pid")]
    if status is None or down:
        raise DemoError(f"the system is not running ({', '.join(down) or 'supervisor'} down): run `make up` first")
    cfg = load_config(config)
    if epochs:
        cfg = cfg.model_copy(update={"epochs": epochs})
    codec = make_codec(settings.kafka.schema_registry_url)

    shapes = TolariaRun(cfg, settings, "demo-shapes", progress=False).slot_shapes()
    missing = lambda catalog: [s for s in shapes.values()  # noqa: E731
                               if not catalog.query(input_shape=s[0], output_shape=s[1])]
    gaps = missing(load_catalog(settings.kafka, codec))
    if gaps:
        blueprints = [bp for in_shape, out_shape in gaps for bp in for_slot(in_shape, out_shape)]
        submit(settings.kafka, codec, blueprints, submitted_by="demo")
        print(f"waiting for kernels for slots {gaps} (Tezzeret compiles, Urabrask characterises)...", flush=True)
        _wait(lambda: not missing(load_catalog(settings.kafka, codec)), kernel_wait_s, "kernels for every slot", 2.0)

    stamp = uuid.uuid4().hex[:6]
    adaptive_id, baseline_id = f"demo-{stamp}", f"demo-{stamp}-noadapt"
    print(f"adaptive run {adaptive_id} (Tamiyo decides):", flush=True)
    adaptive = start_run(cfg, settings, run_id=adaptive_id)
    print(f"baseline run {baseline_id} (--no-adapt):", flush=True)
    baseline = start_run(cfg, settings, run_id=baseline_id, no_adapt=True)

    db = default_db_path(settings.state_dir)
    ids = f"'{adaptive_id}', '{baseline_id}'"
    done = f"SELECT count(*) FROM runs WHERE run_id IN ({ids}) AND status = 'completed'"
    _wait(lambda: db.exists() and run_query(db, done).rows[0][0] == 2, 120, "Nissa to record both runs")
    result = run_query(db, COMPARISON.format(ids=ids, adaptive=adaptive_id, action=decision_action_sql("d")))
    write_result(result, "table")
    acted = result.rows[0][result.columns.index("tamiyo_actions")] if result.rows else 0
    if not acted:
        print("warning: Tamiyo took no action in the adaptive run (no kernel for the slots, or Tamiyo was down or "
              "restarting); see `esper status` and the tamiyo log", flush=True)
    gain = adaptive.validation_accuracy - baseline.validation_accuracy
    print(f"adaptive vs baseline: validation accuracy {adaptive.validation_accuracy:.4f} vs "
          f"{baseline.validation_accuracy:.4f} ({gain:+.4f}), test {adaptive.test_accuracy:.4f} vs "
          f"{baseline.test_accuracy:.4f}, parameters {adaptive.parameter_count} vs {baseline.parameter_count}")
    out = report or settings.state_dir / "reports" / f"{adaptive_id}.html"
    write_report(db, adaptive_id, out, compare=baseline_id)
    print(f"report: {out}")
    return 0
