"""The ``esper`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from services.oona.errors import EsperError

log = logging.getLogger("esper")

Command = Callable[[argparse.Namespace], int]


def _cmd_schemas(args: argparse.Namespace) -> int:
    from services.oona import schema_store

    if args.action == "generate":
        written = schema_store.generate()
        for path in written:
            print(f"wrote {path}")
        print(f"schemas up to date ({len(written)} files written)")
    else:
        schema_store.check()
        print("schemas match the contracts")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from services.oona.local_broker import LocalKafka
    from services.settings import load_settings

    settings = load_settings()
    broker = LocalKafka(settings.local_broker())
    if args.action == "start":
        if settings.external_cluster:
            print(f"an external cluster is configured ({settings.kafka.bootstrap_servers}); not starting a local broker")
            return 0
        pid = broker.start()
        print(f"kafka running pid={pid} bootstrap={broker.cfg.bootstrap_servers} log={broker.log_file}")
    elif args.action == "stop":
        stopped = broker.stop()
        print("kafka stopped" if stopped else "kafka was not running")
    else:
        status = broker.status()
        print(json.dumps(status) if args.json else " ".join(f"{k}={v}" for k, v in status.items()))
        return 0 if status["running"] else 3
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from services.oona.admin import ensure_topics, wait_for_broker
    from services.oona.topic_registry import TOPICS, all_topics
    from services.settings import load_settings

    settings = load_settings()
    wait_for_broker(settings.kafka)
    if args.action == "create":
        created = ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix))
        print(f"{len(created)} topics created, {len(TOPICS) - len(created)} already present")
    else:
        for spec in TOPICS:
            print(f"{spec.name:36} {spec.payload.__name__:22} key={spec.key:12} partitions={spec.partitions} "
                  f"{'compacted' if spec.compacted else 'delete'}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from services.oona.admin import ensure_topics
    from services.oona.cluster import ensure_cluster
    from services.oona.topic_registry import all_topics
    from services.settings import load_settings

    settings = load_settings()
    print(ensure_cluster(settings))
    created = ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix))
    print(f"topics: {len(created)} created, the rest already present")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from services.oona.cluster import stop_cluster
    from services.settings import load_settings

    print(stop_cluster(load_settings()))
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from services.oona.tail import tail

    return tail(args.topic, max_events=args.max, from_beginning=args.from_beginning, timeout_s=args.timeout)


def _cmd_run(args: argparse.Namespace) -> int:
    from services.settings import load_settings
    from services.tolaria.config import load_config
    from services.tolaria.run import resume_run, start_run

    settings = load_settings()
    if args.resume:
        if args.config or args.no_adapt or args.run_id:
            raise EsperUsageError("--resume RUN_ID takes no CONFIG, --run-id or --no-adapt (they come from the checkpoint)")
        result = resume_run(args.resume, settings, progress=not args.quiet)
    else:
        if not args.config:
            raise EsperUsageError("a CONFIG file is required (or --resume RUN_ID)")
        cfg = load_config(args.config)
        result = start_run(cfg, settings, run_id=args.run_id, no_adapt=args.no_adapt, progress=not args.quiet)
    print(f"run {result.run_id} completed: val_acc={result.validation_accuracy:.4f} test_acc={result.test_accuracy:.4f} "
          f"params={result.parameter_count} (seeds {result.seed_parameter_count}) "
          f"events={result.events_emitted} skipped_as_already_on_log={result.events_skipped} "
          f"seeds={result.seed_states}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from services.bench.runner import run_benchmarks

    return run_benchmarks(events=args.events, output=args.output, only=args.only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esper", description="Morphogenetic training on an event-sourced Kafka log.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info logging, -vv: debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schemas", help="generate or check the Avro schemas mirrored from contracts/")
    p.add_argument("action", choices=["generate", "check"])
    p.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("broker", help="the project's own single-node Kafka (KRaft)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("topics", help="create (idempotently) or list Esper's topics")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("up", help="start the broker (unless an external one is set) and provision topics")
    p.set_defaults(func=_cmd_up)
    p = sub.add_parser("down", help="stop what `esper up` started; data is kept")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("tail", help="print the events of a topic as JSON lines")
    p.add_argument("topic")
    p.add_argument("--max", type=int, default=0, help="stop after this many events (0: no limit)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser("run", help="train a model with seed slots (Tolaria); streams the run onto Kafka")
    p.add_argument("config", nargs="?", help="run config (YAML or JSON)")
    p.add_argument("--run-id", help="name the run (default: NAME-TIMESTAMP-XXXX)")
    p.add_argument("--no-adapt", action="store_true", help="baseline: same config, seeds stay dormant")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="run the benchmarks; prints ratios and writes JSON")
    p.add_argument("--events", type=int, default=200_000, help="events per throughput benchmark")
    p.add_argument("--output", default="bench-results/bench.json", help="JSON results file")
    p.add_argument("--only", action="append", default=[], help="run only benchmarks whose name contains this")
    p.set_defaults(func=_cmd_bench)
    return parser


class EsperUsageError(EsperError):
    """Arguments that argparse accepts but that do not go together."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # Connection retries are reported once, as the command's own error.
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    from services.tolaria.checkpoint import CheckpointError
    from services.tolaria.config import ConfigError

    try:
        return args.func(args)
    except EsperUsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"esper: error: {exc}", file=sys.stderr)
        return 2
    except (EsperError, ConfigError, CheckpointError) as exc:
        print(f"esper: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
