"""Nissa replay, counterfactual replay, archive and reports on a real broker, over a real short Tolaria run.

One module-scoped recording: Urza kernels for the slot, Tamiyo running, a 12-epoch adaptive run
and a 10-epoch --no-adapt run, then the live sink ingests everything into ``live.duckdb``.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid

import duckdb
import pytest

from services.cli.settings import EsperSettings
from services.nissa.archive import ArchiveReader, archive_log, load_manifest
from services.nissa.errors import ArchiveError, DatabaseUnreadableError, UnknownRunError
from services.nissa.replay import replay_from_archive, replay_from_kafka
from services.nissa.report import write_report
from services.nissa.sink import NissaSink, sink_tables
from services.oona.admin import delete_topics, ensure_topics
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics
from services.tamiyo.policy_store import INITIAL_POLICY, PolicyError
from services.tolaria.config import load_config
from services.tolaria.run import start_run
from tests.esper_cli import ESPER, REPO, esper_env
from tests.integration.test_tamiyo import EXAMPLE, publish_slot_kernels, tamiyo_running

RUN_TABLES = ("training_session_event", "health_signal", "epoch_completed", "adaptation_decision", "kasmina_command",
              "seed_transition", "field_report")
SHARED_TABLES = ("blueprint_submitted", "kernel_ready", "kernel_characterized", "compiled_kernel", "dead_letters",
                 "policy_published", "policy_promoted")
DECISION_COLUMNS = ("decision_id, epoch, adaptation_type, action, layer_id, seed_idx, blueprint_id, kernel_id, "
                    "policy_version")


@pytest.fixture(scope="module")
def recorded(kafka_bootstrap, tmp_path_factory):
    """(settings, adaptive run id, baseline run id, live DuckDB path, work folder)."""
    work = tmp_path_factory.mktemp("nissa-replay")
    prefix = f"it.{uuid.uuid4().hex[:8]}."
    settings = EsperSettings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                             state_dir=work / "state", external_cluster=True)
    ensure_topics(settings.kafka, all_topics(prefix))
    publish_slot_kernels(settings.kafka, [2], [8])
    cfg = load_config(EXAMPLE).model_copy(update={"epochs": 12})
    adaptive, baseline = f"adaptive-{uuid.uuid4().hex[:6]}", f"baseline-{uuid.uuid4().hex[:6]}"
    with tamiyo_running(settings.kafka):
        start_run(cfg, settings, run_id=adaptive, progress=False)
    start_run(cfg.model_copy(update={"epochs": 10}), settings, run_id=baseline, no_adapt=True, progress=False)
    live = work / "live.duckdb"
    sink = NissaSink(settings.kafka, live)
    sink.start()
    try:
        sink.run_until_caught_up(60)
    finally:
        sink.close()
    yield settings, adaptive, baseline, live, work
    delete_topics(settings.kafka, [spec.name for spec in all_topics(prefix)])


def counts(db, run_id: str | None) -> dict[str, int]:
    """Rows per sink table (only the run's in run-scoped tables when run_id is given)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return {name: con.execute(f'SELECT count(*) FROM "{name}"' + (" WHERE run_id = ?" if run_id and
                                  name in RUN_TABLES else ""), [run_id] if run_id and name in RUN_TABLES else []
                                  ).fetchone()[0] for name in (*RUN_TABLES, *SHARED_TABLES)}


def assert_same_rows(db, live, run_id: str) -> None:
    """Every table of ``db`` holds, row for row, what the live sink stored of the run (run-scoped tables) and
    everything it stored of the shared ones (a dead letter's ``failed_at`` aside: when it was made)."""
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute(f"ATTACH '{live}' AS live (READ_ONLY)")
        for name in (*RUN_TABLES, *SHARED_TABLES):
            where = " WHERE run_id = ?" if name in RUN_TABLES else ""
            params = [run_id] if where else []
            columns = "* EXCLUDE (failed_at)" if name == "dead_letters" else "*"
            ours = con.execute(f'SELECT {columns} FROM main."{name}"{where} ORDER BY ALL', params).fetchall()
            theirs = con.execute(f'SELECT {columns} FROM live."{name}"{where} ORDER BY ALL', params).fetchall()
            assert ours == theirs, f"{name}: {len(ours)} rows replayed, {len(theirs)} live, or other values"
        assert con.execute("SELECT count(*) FROM main.health_signal").fetchone()[0] > 0


def rows(db, sql: str, *params) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_replay_rebuilds_the_run_like_the_live_sink_and_the_initial_policy_decides_the_same(recorded):
    settings, run, _, live, work = recorded
    out = work / "replay.duckdb"
    result = replay_from_kafka(settings.kafka, run, out, policy=INITIAL_POLICY)
    expected = counts(live, run)
    assert counts(out, None) == expected
    assert_same_rows(out, live, run)
    assert expected["epoch_completed"] == 12 and expected["health_signal"] > 0 and expected["seed_transition"] > 0
    assert result.run_events == sum(expected[t] for t in RUN_TABLES)
    # Other runs' events are not in the replay.
    assert rows(out, "SELECT DISTINCT run_id FROM health_signal") == [(run,)]

    # Counterfactual replay with the policy that decided live: the same decisions, epoch by epoch.
    real = rows(out, f"SELECT {DECISION_COLUMNS} FROM adaptation_decision ORDER BY decision_id")
    would = rows(out, f"SELECT {DECISION_COLUMNS} FROM counterfactual_decisions ORDER BY decision_id")
    assert would == real and len(real) >= 12
    assert any(r[2] == "add_seed" for r in real)
    assert rows(out, "SELECT count(*), bool_and(same) FROM decision_comparison") == [(12, True)]
    assert (result.agreeing_epochs, result.compared_epochs) == (12, 12)

    # --from-offset: the run's epoch events from the offset of epoch 6 on.
    (offset,) = rows(live, "SELECT kafka_offset FROM epoch_completed WHERE run_id = ? AND state_epoch = 6", run)[0]
    partial = replay_from_kafka(settings.kafka, run, work / "partial.duckdb", from_offset=offset)
    assert rows(partial.db, "SELECT min(state_epoch), count(*) FROM epoch_completed") == [(6, 6)]


def test_archive_then_replay_and_sql_with_the_broker_gone(recorded):
    settings, run, baseline, live, work = recorded
    archive = work / "archive"
    first = archive_log(settings.kafka, archive)
    assert first.events == sum(counts(live, None).values()) and first.lost == 0
    assert (archive / "topic=telemetry.seed.health" / f"run_id={run}").is_dir()
    assert archive_log(settings.kafka, archive).events == 0  # incremental: nothing new
    assert load_manifest(archive).next_offsets  # remembers the offsets archived

    # Replay from the archive alone (no settings at all), with the counterfactual policy too.
    result = replay_from_archive(archive, run, work / "from-archive.duckdb", policy=INITIAL_POLICY)
    assert counts(result.db, None) == counts(live, run)
    assert_same_rows(result.db, live, run)  # DuckDB copied the rows: the same as the live sink's, row for row
    assert (result.agreeing_epochs, result.compared_epochs) == (12, 12)
    assert ArchiveReader(archive).select(baseline).run_rows == sum(counts(live, baseline)[t] for t in RUN_TABLES)

    # The CLI with the broker "gone": nothing listens on the bootstrap address.
    gone = esper_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", ESPER_STATE_DIR=str(work / "state"),
                     ESPER_KAFKA__CONNECT_TIMEOUT_S="2")
    query = f"SELECT count(*) AS n, max(state_epoch) AS last FROM epoch_completed WHERE run_id = '{run}'"
    done = subprocess.run([*ESPER, "sql", "--archive", str(archive), "--format", "json", query], env=gone,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 12, "last": 11}]
    out = work / "cli-archive.duckdb"
    done = subprocess.run([*ESPER, "replay", run, "--archive", str(archive), "--out", str(out), "--no-progress"],
                          env=gone, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert counts(out, None) == counts(live, run)
    # The archive's views answer like the live database's.
    sql_runs = subprocess.run([*ESPER, "sql", "--archive", str(archive), "--format", "json",
                               "SELECT run_id, epochs, seeds_germinated FROM runs ORDER BY run_id"], env=gone,
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(sql_runs.stdout) == [
        dict(zip(("run_id", "epochs", "seeds_germinated"), r, strict=True))
        for r in rows(live, "SELECT run_id, epochs, seeds_germinated FROM runs ORDER BY run_id")]


def test_report_plots_what_duckdb_holds(recorded):
    _, run, baseline, live, work = recorded
    out = work / "report.html"
    report = write_report(live, run, out, compare=baseline)
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 6 and len(report.plots) == 6  # accuracy, parameters, 2 x (timeline, health)
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert "http://" not in page and "https://" not in page  # self-contained

    (epochs, final_val), = rows(live, "SELECT count(DISTINCT state_epoch), arg_max(validation_accuracy, state_epoch) "
                                      "FROM epoch_completed WHERE run_id = ?", run)
    accuracy = re.search(r'<figure data-plot="accuracy"([^>]*)>', page).group(1)
    assert f'data-{run}-points="{epochs}"' in accuracy and epochs == 12
    assert f'data-{run}-final-validation="{round(final_val, 4)}"' in accuracy
    assert f'data-{baseline}-points="10"' in accuracy
    (events,), = rows(live, "SELECT count(*) FROM seed_transition WHERE run_id = ? AND to_state IN "
                            "('germinated', 'grafting', 'fossilized', 'culled')", run)
    assert events > 0 and f'data-{run}-events="{events}"' in accuracy
    (params,), = rows(live, "SELECT arg_max(parameter_count, state_epoch) FROM epoch_completed WHERE run_id = ?", run)
    assert f'data-{run}-final-parameters="{params}"' in page
    (seeds,), = rows(live, "SELECT count(DISTINCT (layer_name, seed_idx)) FROM seed_transition WHERE run_id = ?", run)
    assert f'<figure data-plot="timeline-{run}" data-seeds="{seeds}"' in page
    (layers, health_epochs), = rows(live, "SELECT count(DISTINCT layer_id), count(DISTINCT epoch) FROM layer_health "
                                          "WHERE run_id = ?", run)
    assert f'<figure data-plot="health-{run}" data-layers="{layers}" data-epochs="{health_epochs}"' in page
    print(f"report checked: {epochs} epochs, final val {final_val:.4f}, {events} events, {params} params, "
          f"{seeds} seeds, {layers} layers x {health_epochs} epochs of health")


def test_the_capacity_signal_arrives_in_nissa_per_signal_and_per_layer(recorded):
    _, run, _, live, _ = recorded
    # body.0 (8 units) feeds the head: every epoch's signals carry a positive, finite capacity_gain, the same for
    # every seed of the layer, and layer_health shows it beside the health statistics.
    per_epoch = rows(live, "SELECT epoch, count(DISTINCT capacity_gain), min(capacity_gain) FROM health_signal "
                           "WHERE run_id = ? GROUP BY epoch ORDER BY epoch", run)
    assert len(per_epoch) == 12
    assert all(distinct == 1 and 0 < low < 1e3 for _, distinct, low in per_epoch)
    layer = rows(live, "SELECT h.epoch, h.capacity_gain, s.capacity_gain FROM layer_health h JOIN "
                       "(SELECT epoch, max(capacity_gain) AS capacity_gain FROM health_signal WHERE run_id = ? "
                       "GROUP BY epoch) s USING (epoch) WHERE h.run_id = ? ORDER BY h.epoch", run, run)
    assert len(layer) == 12 and all(view == signal for _, view, signal in layer)


def test_bad_input_is_one_clear_line(recorded, tmp_path):
    settings, run, _, live, work = recorded
    with pytest.raises(UnknownRunError):
        replay_from_kafka(settings.kafka, "no-such-run", tmp_path / "x.duckdb")
    assert not (tmp_path / "x.duckdb").exists()
    with pytest.raises(UnknownRunError):
        write_report(live, "no-such-run", tmp_path / "r.html")
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnreadableError):
        write_report(corrupt, run, tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError):
        replay_from_archive(tmp_path / "empty", run, tmp_path / "y.duckdb")
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text("{not json")
    with pytest.raises(PolicyError):
        replay_from_kafka(settings.kafka, run, tmp_path / "z.duckdb", policy=bad_policy)

    env = esper_env(ESPER_STATE_DIR=str(work / "state"))
    for args in (["report", run, "--db", str(corrupt)], ["sql", "--archive", str(tmp_path / "empty"), "SELECT 1"],
                 ["replay", run, "--archive", str(tmp_path / "nowhere")]):
        done = subprocess.run([*ESPER, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("esper: error: ") and done.stderr.count("\n") == 1, done.stderr


def test_sink_tables_cover_the_replayed_tables():
    assert set(RUN_TABLES) | set(SHARED_TABLES) == {t.name for t in sink_tables()}
