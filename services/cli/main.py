"""The ``esper`` command."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from services.core.errors import EsperError, UsageError

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
    from services.cli.settings import load_settings
    from services.oona.local_broker import LocalCluster

    settings = load_settings(nodes=args.brokers)
    cluster = LocalCluster(settings.local_brokers())
    if args.action == "start":
        if settings.external_cluster:
            print(
                f"an external cluster is configured ({settings.kafka.bootstrap_servers}); not starting a local broker"
            )
            return 0
        pids = cluster.start()
        for node, pid in zip(cluster.nodes, pids, strict=True):
            name = "kafka" if len(pids) == 1 else f"kafka node {node.cfg.node_id}"
            print(f"{name} running pid={pid} bootstrap={node.cfg.bootstrap_servers} log={node.log_file}")
        if len(pids) > 1:
            print(f"kafka cluster of {len(pids)} nodes: bootstrap={cluster.bootstrap_servers}")
    elif args.action == "stop":
        stopped = cluster.stop()
        print("kafka was not running" if not stopped else "kafka stopped" if len(cluster.nodes) == 1
              else f"kafka stopped ({stopped} of {len(cluster.nodes)} nodes running)")
    else:
        nodes = cluster.status()
        if args.json:
            print(json.dumps(nodes[0] if len(nodes) == 1 else nodes))
        else:
            for status in nodes:
                print(" ".join(f"{k}={v}" for k, v in status.items()))
        return 0 if all(status["running"] for status in nodes) else 3
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings
    from services.oona.admin import ensure_topics, wait_for_broker
    from services.oona.topic_registry import TOPICS, all_topics

    settings = load_settings()
    wait_for_broker(settings.kafka)
    if args.action == "create":
        created = ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix), grow=args.grow_partitions)
        print(f"{len(created)} topics created, {len(TOPICS) - len(created)} already present")
    else:
        for spec in TOPICS:
            spec = spec.sized(settings.kafka.run_partitions, settings.kafka.work_partitions)
            print(f"{spec.name:36} {spec.payload.__name__:22} key={spec.key:12} partitions={spec.partitions} "
                  f"{'compacted' if spec.compacted else 'delete'}")
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from services.cli.tail import tail

    return tail(args.topic, max_events=args.max, from_beginning=args.from_beginning, timeout_s=args.timeout)


def _cmd_run(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings
    from services.cli.tamiyo_commands import check_policy_version
    from services.tolaria.config import load_config, parse_config
    from services.tolaria.fork import ForkRequest
    from services.tolaria.run import fork_run, resume_run, start_run

    if args.policy is not None and args.no_adapt:
        raise UsageError("--policy VERSION and --no-adapt exclude each other (--no-adapt: no controller at all)")
    if (args.at_epoch is not None or args.epochs is not None or args.budget is not None) and not args.fork:
        raise UsageError("--at-epoch, --epochs and --budget go with --fork RUN_ID")
    if args.no_adapt and (args.controller is not None or args.exploration is not None):
        raise UsageError("--controller/--exploration and --no-adapt exclude each other (--no-adapt: no controller)")
    if args.exploration is not None and not 0 <= args.exploration <= 1:
        raise UsageError(f"--exploration must be within 0..1 (got {args.exploration})")
    settings = load_settings()
    if args.resume:
        if args.config or args.no_adapt or args.run_id or args.fork or args.policy is not None \
                or args.controller is not None or args.exploration is not None:
            raise UsageError("--resume RUN_ID takes no CONFIG, --run-id, --fork, --policy or --no-adapt "
                             "(they come from the checkpoint)")
        result = resume_run(args.resume, settings, progress=not args.quiet)
    elif args.fork:
        if args.config or args.at_epoch is None:
            raise UsageError("--fork RUN_ID takes --at-epoch K and no CONFIG (the config is the parent's)")
        if args.policy is not None:
            check_policy_version(settings, args.policy)
        request = ForkRequest(args.fork, args.at_epoch, no_adapt=args.no_adapt, policy_version=args.policy,
                              epochs=args.epochs, controller=args.controller, exploration=args.exploration,
                              budget=args.budget)
        result = fork_run(request, settings, run_id=args.run_id, progress=not args.quiet)
    else:
        if not args.config:
            raise UsageError("a CONFIG file is required (or --resume RUN_ID, or --fork RUN_ID --at-epoch K)")
        cfg = load_config(args.config)
        if args.policy is not None:
            check_policy_version(settings, args.policy)
            cfg = parse_config({**cfg.model_dump(mode="json"), "policy_version": args.policy}, "--policy")
        elif cfg.policy_version is not None:
            check_policy_version(settings, cfg.policy_version)
        overrides = {k: v for k, v in (("controller", args.controller), ("exploration", args.exploration))
                     if v is not None}
        if overrides:
            cfg = parse_config({**cfg.model_dump(mode="json"), **overrides}, "--controller/--exploration")
        result = start_run(cfg, settings, run_id=args.run_id, no_adapt=args.no_adapt, progress=not args.quiet)
    print(
        f"run {result.run_id} completed: val_acc={result.validation_accuracy:.4f} test_acc={result.test_accuracy:.4f} "
        f"params={result.parameter_count} (seeds {result.seed_parameter_count}) "
        f"events={result.events_emitted} skipped_as_already_on_log={result.events_skipped} "
        f"seeds={result.seed_states}"
    )
    return 0


def _shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must look like 64 or 1x8x8") from None


def _connected():
    from services.cli.settings import load_settings
    from services.oona.admin import ensure_topics, wait_for_broker
    from services.oona.codec import make_codec
    from services.oona.topic_registry import all_topics

    settings = load_settings()
    wait_for_broker(settings.kafka)
    ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix))
    return settings, make_codec(settings.kafka.schema_registry_url)


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.oona.service_loop import StopFlag, run_until_stopped

    if args.service == "nissa":  # the sink manages its own connection and DuckDB file
        from services.cli.nissa_commands import cmd_serve_nissa

        return cmd_serve_nissa(args)
    settings, codec = _connected()
    blobs = settings.state_dir / "blobs"
    if args.service == "tamiyo":
        from services.cli.tamiyo_commands import tamiyo_service

        service = tamiyo_service(args, settings, codec)
    elif args.service == "tezzeret":
        from services.tezzeret.service import Tezzeret

        service = Tezzeret(settings.kafka, codec, blobs, worker=args.instance)
    elif args.service == "urabrask":
        from services.urabrask.service import Urabrask

        service = Urabrask(settings.kafka, codec, blobs, worker=args.instance)
    else:
        from services.karn.service import Karn
        from services.karn.starter_library import DEFAULT_SLOTS, parse_slot, starter_library

        try:
            slots = [parse_slot(s) for s in args.slot] or list(DEFAULT_SLOTS)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        service = Karn(settings.kafka, codec, starter_library(slots), worker=args.instance)
    stop = StopFlag()
    stop.install_signal_handlers()
    print(f"{args.service} serving on {settings.kafka.bootstrap_servers} (Ctrl-C to stop)", flush=True)
    handled = run_until_stopped(args.service, service.step, stop, service.close)
    print(f"{args.service} stopped after {handled} events")
    return 0


def _cmd_blueprint(args: argparse.Namespace) -> int:
    from services.blueprints.files import load_blueprints
    from services.karn.service import submit
    from services.karn.starter_library import DEFAULT_SLOTS, parse_slot, starter_library

    if args.action == "submit":
        if args.file is None or args.slot or args.widened:
            raise UsageError("blueprint submit takes one FILE (and no --slot / --widened)")
        blueprints = load_blueprints(args.file)
    else:
        if args.file is not None:
            raise UsageError("blueprint starters takes no FILE: name the slots with --slot")
        try:
            slots = [parse_slot(s) for s in args.slot] or list(DEFAULT_SLOTS)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        blueprints = starter_library(slots, widened=args.widened)
    settings, codec = _connected()
    submit(settings.kafka, codec, blueprints, submitted_by=args.submitted_by)
    for bp in blueprints:
        print(f"submitted {bp.blueprint_id} {bp.name} {bp.architecture.input_shape} -> {bp.architecture.output_shape}")
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    from services.urza.catalog import load_catalog

    settings, codec = _connected()
    catalog = load_catalog(settings.kafka, codec)
    if args.action == "blueprints":
        for entry in catalog.blueprints.values():
            bp = entry.blueprint
            print(f"{bp.blueprint_id}  {entry.state.value:13} {bp.name:36} {bp.architecture.input_shape} -> "
                  f"{bp.architecture.output_shape} kernels={len(entry.kernel_ids)}"
                  + (f" reason={entry.failure_reason}" if entry.failure_reason else ""))
        return 0
    if args.action == "fetch":
        from services.oona.topic_registry import topic_spec
        from services.urza.kernel_library import KernelLibrary

        if not args.kernel_id or not args.out:
            raise UsageError("kernels fetch needs KERNEL_ID and --out PATH")
        library = KernelLibrary(settings.kafka, codec, topic_spec("library.kernels", settings.kafka.topic_prefix),
                                settings.state_dir / "blobs")
        try:
            kernel = library.find(args.kernel_id, None, wait_s=2.0)
            data = library.artifact(kernel)
            library.load_module(kernel)  # verifies the checksum and that it loads weights-only
        finally:
            library.close()
        from pathlib import Path

        Path(args.out).write_bytes(data)
        print(f"wrote {args.out} ({len(data)} bytes, sha256 {kernel.metadata.checksum} verified)")
        return 0
    entries = catalog.query(input_shape=args.input_shape, output_shape=args.output_shape, tags=args.tag,
                            max_latency_ms=args.max_latency_ms, max_memory_mb=args.max_memory_mb,
                            only_validated=not args.all)
    for e in entries:
        c = e.characterization
        timing = f"p50={c.latency_ms_p50:.4f}ms mem={c.peak_memory_mb:.3f}MB" if c else "not characterised"
        print(f"{e.metadata.kernel_id}  {e.status.value:9} {e.metadata.name:36} {e.metadata.input_shape} -> "
              f"{e.metadata.output_shape} params={e.metadata.parameter_count} {timing} tags={','.join(e.tags)}")
    print(f"{len(entries)} kernel(s)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from services.cli.bench import run_benchmarks

    return run_benchmarks(events=args.events, output=args.output, only=args.only, profile=args.profile)


def build_parser() -> argparse.ArgumentParser:
    from services.cli import nissa_commands as nissa_cli
    from services.cli.dlq import add_dlq_command
    from services.cli.experiment_command import add_experiment_command
    from services.cli.learn_command import add_learn_command
    from services.cli.system import add_system_commands
    from services.cli.tamiyo_commands import add_policy_command, add_tamiyo_serve_options

    parser = argparse.ArgumentParser(prog="esper", description="Morphogenetic training on an event-sourced Kafka log.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info logging, -vv: debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schemas", help="generate or check the Avro schemas mirrored from contracts/")
    p.add_argument("action", choices=["generate", "check"])
    p.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("broker", help="the project's own Kafka (KRaft): one node, or a local cluster")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--brokers", type=int, metavar="N",
                   help="nodes of the local cluster (default: ESPER_BROKER__NODES, else the count last started, "
                        "else 1); each node is broker and controller")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("topics", help="create (idempotently) or list Esper's topics")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--grow-partitions", action="store_true",
                   help="create: give existing topics the partition counts the settings ask for when they have "
                        "fewer (Kafka cannot remove partitions; adding moves keys: only with no run in flight)")
    p.set_defaults(func=_cmd_topics)

    add_system_commands(sub)

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
    p.add_argument("--fork", metavar="RUN_ID",
                   help="a new run from RUN_ID's state at the end of --at-epoch K (its kept per-epoch checkpoint)")
    p.add_argument("--at-epoch", type=int, metavar="K",
                   help="--fork: the parent's epoch whose end the fork starts from")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="--fork: the fork's epochs in all, as a config's `epochs` (default: the parent's)")
    p.add_argument("--policy", metavar="VERSION",
                   help="the Tamiyo policy version this run asks for (a fork's other controller; default: the "
                        "parent's for a fork, the promoted one otherwise)")
    p.add_argument("--controller", choices=["policy", "heuristic", "random"],
                   help="how Tamiyo chooses germinations: the policy (default), the teacher's heuristic rule, or "
                        "random slot, kernel and epoch with the budget left")
    p.add_argument("--exploration", type=float, metavar="EPS",
                   help="with the policy: chance per epoch of a random germination, recorded as explored")
    p.add_argument("--budget", type=int, metavar="N",
                   help="--fork: germinations in all, the parent's included (default: the parent's budget)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=_cmd_run)

    add_experiment_command(sub)
    add_learn_command(sub)

    p = sub.add_parser("serve", help="run a service until Ctrl-C / SIGTERM")
    p.add_argument("service", choices=["karn", "nissa", "tamiyo", "tezzeret", "urabrask"])
    p.add_argument("--slot", action="append", default=[], help="karn: slot shapes to seed, e.g. 64:16 or 1x8x8:4x8x8")
    p.add_argument("--instance", help="this instance's name, unique in the service's group and stable across "
                                      "restarts: it names the transactional id, so a restarted instance fences "
                                      "its predecessor (tamiyo default: 1; others: a random one)")
    add_tamiyo_serve_options(p)
    nissa_cli.add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("blueprint", help="submit blueprints: a file's (YAML/JSON: one blueprint or a list), or the "
                                         "starter blueprints of slots")
    p.add_argument("action", choices=["submit", "starters"])
    p.add_argument("file", nargs="?", help="submit: the YAML/JSON file")
    p.add_argument("--slot", action="append", default=[],
                   help="starters: a slot's shapes, e.g. 2:8 or 1x8x8:4x8x8 (repeatable; default: Karn's "
                        "default slots)")
    p.add_argument("--widened", action="store_true",
                   help="starters: also the slots the width seeds of those slots make once fossilized (Karn offers "
                        "these only after such a fossil)")
    p.add_argument("--submitted-by", default="user")
    p.set_defaults(func=_cmd_blueprint)

    p = sub.add_parser("kernels", help="query Urza's library: list kernels, list blueprints, fetch an artifact")
    p.add_argument("action", choices=["list", "blueprints", "fetch"])
    p.add_argument("kernel_id", nargs="?")
    p.add_argument("--input-shape", type=_shape)
    p.add_argument("--output-shape", type=_shape)
    p.add_argument("--tag", action="append", default=[], help="require a tag (low-latency, low-memory, high-capacity)")
    p.add_argument("--max-latency-ms", type=float)
    p.add_argument("--max-memory-mb", type=float)
    p.add_argument("--all", action="store_true", help="include kernels not (yet) validated")
    p.add_argument("--out", help="fetch: where to write the artifact")
    p.set_defaults(func=_cmd_kernels)

    add_policy_command(sub)
    nissa_cli.add_commands(sub)
    add_dlq_command(sub)

    p = sub.add_parser("bench", help="run the benchmarks; prints ratios and writes JSON")
    p.add_argument("--events", type=int, default=200_000, help="events per throughput benchmark")
    p.add_argument("--output", default="bench-results/bench.json", help="JSON results file")
    p.add_argument("--only", action="append", default=[], help="run only benchmarks whose name contains this")
    p.add_argument("--profile", metavar="DIR",
                   help="run each figure under cProfile; its top functions in DIR/FIGURE.txt")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack to stderr (the log)
    except (OSError, ValueError):  # stderr is not a real file (e.g. captured in tests)
        pass
    if not args.verbose:
        # Connection retries are reported once, as the command's own error.
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"esper: error: {exc}", file=sys.stderr)
        return 2
    except EsperError as exc:
        print(f"esper: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return 130

