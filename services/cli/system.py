"""The whole system from the ``esper`` command: up, down, status, supervise, demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.core.paths import DEFAULT_RUN_CONFIG


def _cmd_up(args: argparse.Namespace) -> int:
    from services.cli import processes
    from services.cli.cluster import ensure_cluster
    from services.cli.settings import load_settings
    from services.cli.supervisor import SERVICES, log_file
    from services.oona.admin import ensure_topics
    from services.oona.topic_registry import all_topics

    settings = load_settings(nodes=args.brokers)
    print(ensure_cluster(settings))
    created = ensure_topics(settings.kafka, all_topics(settings.kafka.topic_prefix), grow=args.grow_partitions)
    print(f"topics: {len(created)} created, the rest already present")
    if not args.no_services:
        pid, fresh = processes.start(settings.state_dir)
        print(f"supervisor: {'started' if fresh else 'already running'} pid={pid} "
              f"log={log_file(settings.state_dir, 'supervisor')}")
        counts = settings.services.instances()
        names = [name if counts.get(name, 1) == 1 else f"{name} x{counts[name]}" for name in SERVICES]
        print(f"services: {', '.join(names)} (logs in {log_file(settings.state_dir, 'x').parent}); "
              "`esper status` shows them")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from services.cli import processes
    from services.cli.cluster import stop_cluster
    from services.cli.settings import load_settings

    settings = load_settings()
    print("services: " + processes.stop(settings.state_dir))
    print(stop_cluster(settings))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from services.cli.settings import load_settings
    from services.cli.status import (
        GROUP_INPUTS,
        broker_states,
        cluster_view,
        group_lag,
        nissa_lag,
        status_exit_code,
        topic_replication,
    )
    from services.cli.supervisor import SERVICES, read_status
    from services.nissa.sink import default_db_path
    from services.oona.local_broker import LocalCluster

    settings = load_settings()
    view = cluster_view(settings.kafka)
    local = None if settings.external_cluster else LocalCluster(settings.local_brokers())
    brokers = broker_states(view, None if local is None else
                            [(n.cfg.node_id, n.cfg.bootstrap_servers, n.pid()) for n in local.nodes])
    # The local cluster's controller is the quorum's leader its nodes recorded; an external cluster's
    # is the one its metadata names (in KRaft, a broker standing in for the quorum).
    controller = local.active_controller() if local is not None else view.controller if view else None
    broker_up = view is not None and all(b.up for b in brokers)
    up_count = sum(b.up for b in brokers)
    broker = (f"up ({up_count} broker(s) at {settings.kafka.bootstrap_servers})" if broker_up else
              f"down ({up_count} of {len(brokers)} broker(s) up at {settings.kafka.bootstrap_servers})" if view
              else f"down ({settings.kafka.bootstrap_servers})")
    supervisor = read_status(settings.state_dir)
    services = []
    for name in SERVICES:
        info = (supervisor or {}).get("services", {}).get(name, {})
        lag = None
        if view is not None:
            lag = (nissa_lag(settings.kafka, default_db_path(settings.state_dir)) if name == "nissa"
                   else group_lag(settings.kafka, name) if name in GROUP_INPUTS else None)
        instances = [{"instance": int(i), "up": bool(e.get("pid")), "pid": e.get("pid"),
                      "restarts": e.get("restarts", 0), "last_exit": e.get("last_exit")}
                     for i, e in sorted(info.get("instances", {}).items(), key=lambda item: int(item[0]))]
        up = all(e["up"] for e in instances) if instances else bool(info.get("pid"))
        services.append({"service": name, "up": up, "pid": info.get("pid"), "instances": instances,
                         "restarts": info.get("restarts", 0), "last_exit": info.get("last_exit"),
                         "lag": lag.events if lag is not None else None, "lag_detail": lag.detail if lag else "",
                         "has_lag": name == "nissa" or name in GROUP_INPUTS})
    topics = topic_replication(settings.kafka) if view is not None else []
    under_replicated = sum(t.under_replicated for t in topics)
    code = status_exit_code(broker_up, services, strict=args.strict, under_replicated=under_replicated)
    if args.json:
        print(json.dumps({"broker": broker, "broker_up": broker_up,
                          "brokers": [dataclasses.asdict(b) for b in brokers], "controller": controller,
                          "under_replicated": under_replicated,
                          "supervisor_pid": supervisor["pid"] if supervisor else None,
                          "topics": [dataclasses.asdict(t) for t in topics],
                          "services": services, "exit": code}))
        return code
    print(f"broker: {broker}")
    for b in brokers:
        print(f"  broker {b.id} {b.address} {'up' if b.up else 'down'}" + (f" pid={b.pid}" if b.pid else "")
              + (" (active controller)" if b.id == controller else ""))
    print(f"controller: {controller if controller is not None else '?'}; "
          f"under-replicated partitions: {under_replicated if view is not None else '?'}")
    print(f"supervisor: {'up pid=' + str(supervisor['pid']) if supervisor else 'down'}")
    table = Table(show_header=True)
    for column in ("service", "state", "pid", "restarts", "last exit", "lag (events)"):
        table.add_column(column)
    for s in services:
        lag_text = "-"
        if view is not None and s["has_lag"]:
            lag_text = str(s["lag"]) if s["lag"] is not None else "?"
            lag_text += f" ({s['lag_detail']})" if s["lag_detail"] else ""
        table.add_row(s["service"], "up" if s["up"] else "down", str(s["pid"] or "-"), str(s["restarts"]),
                      str(s["last_exit"] if s["last_exit"] is not None else "-"), lag_text)
        if len(s["instances"]) > 1:  # each instance of a scaled-out service (the row above: all of them)
            for e in s["instances"]:
                table.add_row(f"  {s['service']} #{e['instance']}", "up" if e["up"] else "down", str(e["pid"] or "-"),
                              str(e["restarts"]), str(e["last_exit"] if e["last_exit"] is not None else "-"), "")
    Console().print(table)
    if topics:
        replicas = Table(show_header=True)
        for column in ("topic", "replication factor", "min in sync", "under-replicated partitions"):
            replicas.add_column(column)
        for t in topics:
            replicas.add_row(t.topic, str(t.factor), t.min_insync, str(t.under_replicated))
        Console().print(replicas)
    return code


def _cmd_supervise(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings
    from services.cli.supervisor import Supervisor
    from services.oona.service_loop import StopFlag

    settings = load_settings()
    stop = StopFlag()
    stop.install_signal_handlers()
    Supervisor(settings.state_dir, instances=settings.services.instances()).run(stop.is_set)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from services.cli.demo import run_demo

    return run_demo(Path(args.config), epochs=args.epochs, report=Path(args.report) if args.report else None,
                    kernel_wait_s=args.kernel_wait)


def add_system_commands(sub) -> None:
    p = sub.add_parser(
        "up", help="start the broker (unless an external one is set), topics and the supervised services"
    )
    p.add_argument("--no-services", action="store_true", help="only the broker and the topics")
    p.add_argument("--brokers", type=int, metavar="N",
                   help="nodes of the local Kafka cluster (default: ESPER_BROKER__NODES, else the count last "
                        "started, else 1)")
    p.add_argument("--grow-partitions", action="store_true",
                   help="give existing topics the partition counts the settings ask for when they have fewer "
                        "(ESPER_KAFKA__RUN_PARTITIONS / WORK_PARTITIONS; only with no run in flight)")
    p.set_defaults(func=_cmd_up)
    p = sub.add_parser("down", help="stop the services and the local broker; data is kept")
    p.set_defaults(func=_cmd_down)
    p = sub.add_parser("status", help="broker, services (restarts) and consumer lag (exit 3 if anything is down; "
                                      "with --strict, exit 4 if a service restarted or lags)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--strict", action="store_true",
                   help="exit 4 when everything is up but a service has restarted since `esper up` or its lag is "
                        "not 0 (a crash loop looks 'up' between deaths)")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("supervise", help="run every service in the foreground, restarting any that dies "
                                         "(what `esper up` starts in the background)")
    p.set_defaults(func=_cmd_supervise)
    p = sub.add_parser("demo", help="on a running system: an adaptive run and its --no-adapt baseline, compared "
                                    "from SQL, with an HTML report")
    p.add_argument("--config", default=str(DEFAULT_RUN_CONFIG))
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--report", help="HTML report path (default: STATE_DIR/reports/demo-RUN_ID.html)")
    p.add_argument("--kernel-wait", type=float, default=180.0,
                   help="seconds to wait for kernels that fit the slots (Karn -> Tezzeret -> Urabrask)")
    p.set_defaults(func=_cmd_demo)
