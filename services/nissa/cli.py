"""Nissa's commands, ready to be wired into ``esper`` (services/cli.py) and runnable alone.

    esper sql "QUERY" [--format table|csv|json] [--db PATH]   read-only SQL; no QUERY: a prompt
    esper runs [--format ...] [--db PATH]                     runs, status, epochs, seeds, accuracy
    esper serve nissa [--db PATH] [--batch-rows N]            the sink, until Ctrl-C / SIGTERM

``add_commands(subparsers)`` registers ``sql`` and ``runs``; ``add_serve_arguments(parser)``
adds the sink's options to ``esper serve`` and ``cmd_serve_nissa(args)`` runs it. Errors are
EsperError subclasses, which ``esper`` prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.oona.errors import EsperError

PROMPT = "nissa> "
# Also in services/nissa/queries.py (not imported here: building the parser must not load DuckDB).
FORMATS = ("table", "csv", "json")


def _db_path(args: argparse.Namespace) -> Path:
    if getattr(args, "db", None):
        return Path(args.db)
    from services.nissa.sink import default_db_path
    from services.settings import load_settings

    return default_db_path(load_settings().state_dir)


def cmd_sql(args: argparse.Namespace) -> int:
    from services.nissa.queries import run_query, write_result

    db = _db_path(args)
    if args.query:
        write_result(run_query(db, args.query), args.format)
        return 0
    return _interactive(db, args.format)


def _interactive(db: Path, fmt: str) -> int:
    """A prompt: one query per line (``.quit`` or end of input ends it); errors are printed, not fatal."""
    from services.nissa.queries import run_query, write_result

    print(f"nissa sql on {db} (read-only); .quit to leave", file=sys.stderr)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            return 0
        query = line.strip()
        if query in (".quit", ".exit"):
            return 0
        if not query:
            continue
        try:
            write_result(run_query(db, query), fmt)
        except EsperError as exc:
            print(f"error: {exc}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace) -> int:
    from services.nissa.queries import list_runs, write_result

    write_result(list_runs(_db_path(args)), args.format)
    return 0


def cmd_serve_nissa(args: argparse.Namespace) -> int:
    """Run the sink until SIGTERM / SIGINT; prints one line per start and stop."""
    from services.nissa.sink import NissaSink, default_db_path
    from services.oona.admin import ensure_topics, wait_for_broker
    from services.oona.service_loop import StopFlag, run_until_stopped
    from services.oona.topic_registry import all_topics
    from services.settings import load_settings

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


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--db", help="the DuckDB file (default: STATE_DIR/nissa/esper.duckdb)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sql`` and ``runs`` on an ``add_subparsers()`` object."""
    p = sub.add_parser("sql", help="read-only SQL over every event (DuckDB); no QUERY: an interactive prompt")
    p.add_argument("query", nargs="?", help="SQL text, e.g. \"SELECT * FROM runs\"")
    _add_format(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("runs", help="training runs: status, epochs, seeds germinated/fossilized/culled, accuracy")
    _add_format(p)
    p.set_defaults(func=cmd_runs)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``esper serve nissa`` (harmless for the other services)."""
    parser.add_argument("--db", help="nissa: the DuckDB file (default: STATE_DIR/nissa/esper.duckdb)")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="nissa: events per DuckDB transaction at most")
    parser.add_argument("--progress", action="store_true", help="nissa: print `committed N` after each commit")
