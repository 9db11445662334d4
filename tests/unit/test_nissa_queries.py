"""`esper sql` / `esper runs` pieces: read-only queries, one-line errors, output formats (no broker)."""

from __future__ import annotations

import io
import json

import pytest

from services.cli import main as esper_main
from services.nissa.errors import DatabaseMissingError, DatabaseUnreadableError, QueryError
from services.nissa.queries import list_runs, run_query, write_result
from services.nissa.sink import sink_tables
from services.nissa.store import NissaStore
from tests.unit.test_nissa_batch import FakeMessage, encoded, new_batch


@pytest.fixture
def db(tmp_path):
    from services.oona.topic_registry import all_topics

    path = tmp_path / "nissa.duckdb"
    store = NissaStore(path, sink_tables())
    store.create_schema()
    batch = new_batch()
    batch.add([FakeMessage(spec.name, 0, 0, encoded(spec)) for spec in all_topics() if not spec.raw])
    store.write(batch.drain(), {})
    store.close()
    return path


def test_queries_run_read_only(db):
    result = run_query(db, "SELECT layer_name, count(*) AS n FROM health_signal GROUP BY 1")
    assert result.columns == ["layer_name", "n"] and result.rows == [("body.0", 1)]
    assert list_runs(db).rows[0][:3] == ("run-sample", "initialized", 1)


@pytest.mark.parametrize("sql, match", [
    ("SELEC 1", "syntax error"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("DELETE FROM health_signal", "refused"),
    ("CREATE TABLE x (a INT)", "refused"),
    ("   ", "empty query"),
])
def test_bad_sql_and_writes_are_one_line_errors(db, sql, match):
    with pytest.raises(QueryError, match=match) as info:
        run_query(db, sql)
    assert "\n" not in str(info.value)
    assert run_query(db, "SELECT count(*) FROM health_signal").rows == [(1,)]  # nothing was written


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatabaseMissingError, match="no Nissa database"):
        run_query(tmp_path / "absent.duckdb", "SELECT 1")
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"not a database" * 500)
    with pytest.raises(DatabaseUnreadableError, match="not a valid DuckDB") as info:
        run_query(corrupt, "SELECT 1")
    assert "\n" not in str(info.value)


def test_formats(db):
    result = run_query(db, "SELECT run_id, timestamp, features, epoch FROM adaptation_decision")
    out = io.StringIO()
    write_result(result, "json", out)
    row = json.loads(out.getvalue())[0]
    assert row["run_id"] == "run-sample" and row["features"] == {"health": 0.4} and row["timestamp"].endswith("+00:00")
    out = io.StringIO()
    write_result(result, "csv", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "run_id,timestamp,features,epoch" and lines[1].startswith("run-sample,")
    out = io.StringIO()
    write_result(result, "table", out)
    assert "run-sample" in out.getvalue() and out.getvalue().rstrip().endswith("1 row(s)")


def test_cli_prints_one_line_errors_and_exits_nonzero(db, tmp_path, capsys):
    assert esper_main(["sql", "SELECT count(*) AS n FROM runs", "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n\n1\n"
    for argv in (["sql", "DROP TABLE health_signal", "--db", str(db)], ["sql", "SELEC", "--db", str(db)],
                 ["runs", "--db", str(tmp_path / "absent.duckdb")]):
        assert esper_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("esper: error: ") and err.count("\n") == 1


def test_interactive_prompt_until_quit(db, monkeypatch, capsys):
    lines = iter(["SELECT 41 + 1 AS answer", "not sql", "", ".quit", "SELECT 'never reached'"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert esper_main(["sql", "--db", str(db), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "answer\n42\n" in captured.out and "never reached" not in captured.out
    assert "error: " in captured.err


def test_esper_registers_sql_and_runs():
    from services.cli import nissa_commands as cli
    from services.cli.main import build_parser
    from services.nissa.queries import FORMATS

    parser = build_parser()
    args = parser.parse_args(["sql", "SELECT 1", "--format", "json", "--db", "x.duckdb"])
    assert args.func is cli.cmd_sql and args.format == "json" and args.db == "x.duckdb"
    assert parser.parse_args(["runs"]).func is cli.cmd_runs
    assert cli.FORMATS == FORMATS
