"""Nissa's commands, ready to be wired into ``esper`` (services/cli/main.py) and runnable alone.

    esper sql "QUERY" [--format table|csv|json] [--db PATH | --archive DIR]   read-only SQL; no QUERY: a prompt
    esper runs [--format ...] [--db PATH]                     runs, status, epochs, seeds, accuracy
    esper serve nissa [--db PATH] [--batch-rows N]            the sink, until Ctrl-C / SIGTERM
    esper replay RUN_ID [--out PATH] [--from-offset N | --from-time ISO8601] [--policy PATH] [--archive DIR]
    esper archive [--out DIR]                                 every topic to Parquet, incrementally
    esper report RUN_ID [--compare RUN_ID] [--out report.html] [--db PATH]
    esper report --experiment ID [--out report.html] [--db PATH]   an experiment's arms (mean ± 95 % CI)

``add_commands(subparsers)`` registers ``sql``, ``runs``, ``replay``, ``archive`` and ``report``;
``add_serve_arguments(parser)`` adds the sink's options to ``esper serve`` and ``cmd_serve_nissa(args)`` runs
it. Errors are EsperError subclasses, which ``esper`` prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.core.errors import EsperError, UsageError

PROMPT = "nissa> "
# Also in services/nissa/queries.py (not imported here: building the parser must not load DuckDB).
FORMATS = ("table", "csv", "json")


def _db_path(args: argparse.Namespace) -> Path:
    if getattr(args, "db", None):
        return Path(args.db)
    from services.cli.settings import load_settings
    from services.nissa.sink import default_db_path

    return default_db_path(load_settings().state_dir)


def cmd_sql(args: argparse.Namespace) -> int:
    from services.nissa.queries import run_archive_query, run_query, write_result

    if args.archive:
        source, query = Path(args.archive), (lambda sql: run_archive_query(Path(args.archive), sql))
    else:
        db = _db_path(args)
        source, query = db, (lambda sql: run_query(db, sql))
    if args.query:
        write_result(query(args.query), args.format)
        return 0
    return _interactive(source, query, args.format)


def _interactive(source: Path, query, fmt: str) -> int:
    """A prompt: one query per line (``.quit`` or end of input ends it); errors are printed, not fatal."""
    from services.nissa.queries import write_result

    print(f"nissa sql on {source} (read-only, sandboxed); .quit to leave", file=sys.stderr)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            return 0
        if line.strip() in (".quit", ".exit"):
            return 0
        if not line.strip():
            continue
        try:
            write_result(query(line.strip()), fmt)
        except EsperError as exc:
            print(f"error: {exc}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace) -> int:
    from services.nissa.queries import list_runs, write_result

    write_result(list_runs(_db_path(args)), args.format)
    return 0


def cmd_serve_nissa(args: argparse.Namespace) -> int:
    """Run the sink until SIGTERM / SIGINT; prints one line per start and stop."""
    from services.cli.settings import load_settings
    from services.nissa.sink import NissaSink, default_db_path
    from services.oona.admin import ensure_topics, wait_for_broker
    from services.oona.service_loop import StopFlag, run_until_stopped
    from services.oona.topic_registry import all_topics

    settings = load_settings()
    wait_for_broker(settings.kafka)
    ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix))
    db = Path(args.db) if args.db else default_db_path(settings.state_dir)
    progress = (lambda rows: print(f"committed {rows}", flush=True)) if args.progress else None
    sink = NissaSink(settings.kafka, db, batch_rows=args.batch_rows, on_commit=progress)
    stop = StopFlag()
    stop.install_signal_handlers()
    sink.start()
    print(f"nissa serving {settings.kafka.bootstrap_servers} -> {db} (Ctrl-C to stop)", flush=True)
    handled = run_until_stopped("nissa", sink.step, stop, sink.close)
    print(f"nissa stopped after {handled} events ({sink.committed_rows} rows committed this run)")
    return 0


def _settings():
    from services.cli.settings import load_settings

    return load_settings()


def _iso_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2025-01-31T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild one run into a fresh DuckDB file (from Kafka or ``--archive``); print a summary line or two."""
    from services.nissa.replay import default_replay_path, replay_from_archive, replay_from_kafka

    settings = None if args.archive else _settings()
    out = Path(args.out) if args.out else default_replay_path((settings or _settings()).state_dir, args.run_id)
    options = {"from_offset": args.from_offset, "from_time": args.from_time,
               "policy": Path(args.policy) if args.policy else None, "progress": args.progress}
    if args.archive:
        result = replay_from_archive(Path(args.archive), args.run_id, out, **options)
    else:
        result = replay_from_kafka((settings or _settings()).kafka, args.run_id, out, **options)
    tables = ", ".join(f"{name} {rows}" for name, rows in sorted(result.rows.items()) if rows)
    print(f"replayed {result.run_events} events of run {result.run_id} ({result.events} with the shared topics) "
          f"into {result.db} in {result.seconds:.2f}s: {tables}")
    if result.policy_version:
        print(f"policy {result.policy_version}: {result.counterfactual} counterfactual decisions; same as recorded "
              f"in {result.agreeing_epochs}/{result.compared_epochs} epochs (table counterfactual_decisions, "
              f"view decision_comparison); {result.as_of_epochs} epochs decided with the catalogue as of their "
              f"recorded positions, the others with the whole catalogue")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from services.nissa.archive import archive_log, default_archive_dir

    settings = _settings()
    out = Path(args.out) if args.out else default_archive_dir(settings.state_dir)
    result = archive_log(settings.kafka, out, progress=args.progress)
    lost = f"; {result.lost} offsets were deleted by retention before archiving" if result.lost else ""
    print(f"archived {result.events} new events into {len(result.files)} Parquet files under {result.root}{lost}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if (args.run_id is None) == (args.experiment is None):
        raise UsageError("give a RUN_ID or --experiment ID (one of them)")
    if args.experiment is not None:
        from services.nissa.experiment_report import text_table, write_experiment_report

        if args.compare:
            raise UsageError("--compare is for run reports; an experiment report compares its arms")
        out = Path(args.out or f"report-{args.experiment}.html")
        data = write_experiment_report(_db_path(args), args.experiment, out)
        print(f"experiment {data.experiment_id} ({data.arms[0].dataset if data.arms else '?'}):")
        print(text_table(data))
        print(f"wrote {out}")
        return 0
    from services.nissa.report import write_report

    out = Path(args.out or f"report-{args.run_id}.html")
    report = write_report(_db_path(args), args.run_id, out, compare=args.compare)
    print(f"wrote {out} ({len(report.plots)} figures, runs {', '.join(r.run_id for r in report.runs)})")
    if report.fork is not None:
        a = report.fork
        print(f"{a.fork} forked from {a.parent} at epoch {a.fork_epoch}; validation accuracy from there:")
        for epoch, parent, fork, diff in a.rows:
            cells = [f"{v:.4f}" if v is not None else "-" for v in (parent, fork)]
            print(f"  epoch {epoch}: parent {cells[0]}  fork {cells[1]}  fork - parent "
                  f"{f'{diff:+.4f}' if diff is not None else '-'}")
    return 0


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--db", help="the DuckDB file (default: STATE_DIR/nissa/esper.duckdb)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sql`` and ``runs`` on an ``add_subparsers()`` object."""
    p = sub.add_parser("sql", help="read-only SQL over every event (DuckDB); no QUERY: an interactive prompt")
    p.add_argument("query", nargs="?", help="SQL text, e.g. \"SELECT * FROM runs\"")
    _add_format(p)
    p.add_argument("--archive", metavar="DIR", help="query an `esper archive` folder instead of the database")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("runs", help="training runs: status, epochs, seeds germinated/fossilized/culled, accuracy")
    _add_format(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("replay", help="rebuild one run's analytics from the log (or an archive) into a fresh "
                                      "DuckDB file; --policy adds a counterfactual Tamiyo replay")
    p.add_argument("run_id")
    p.add_argument("--out", help="the DuckDB file to (re)create (default: STATE_DIR/nissa/replay-RUN_ID.duckdb)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, metavar="N", help="start at offset N of every run partition")
    start.add_argument("--from-time", type=_iso_time, metavar="ISO8601",
                       help="start at the first event at or after this time (naive times are UTC)")
    p.add_argument("--policy", help="a Tamiyo policy (.json) whose would-be decisions are written beside the real ones")
    p.add_argument("--archive", metavar="DIR", help="read from an `esper archive` folder instead of Kafka")
    _add_progress(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("archive", help="write every topic to Parquet (incremental), so history outlives retention")
    p.add_argument("--out", metavar="DIR", help="archive folder (default: STATE_DIR/nissa/archive)")
    _add_progress(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("report", help="HTML report of a run (curves, adaptation events, seed timeline, health), "
                                      "or of an experiment's arms (--experiment ID)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--experiment", metavar="ID", help="report an experiment (the experiments view) instead of a run")
    p.add_argument("--compare", metavar="RUN_ID",
                   help="overlay a second run (e.g. the --no-adapt baseline, or a fork: aligned from the fork point)")
    p.add_argument("--out", help="HTML file to write (default: report-RUN_ID.html / report-EXPERIMENT.html)")
    p.add_argument("--db", help="the DuckDB file (default: STATE_DIR/nissa/esper.duckdb)")
    p.set_defaults(func=cmd_report)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="a progress bar on stderr (default: when stderr is a terminal)")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``esper serve nissa`` (harmless for the other services)."""
    parser.add_argument("--db", help="nissa: the DuckDB file (default: STATE_DIR/nissa/esper.duckdb)")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="nissa: events per DuckDB transaction at most")
    parser.add_argument("--progress", action="store_true", help="nissa: print `committed N` after each commit")
