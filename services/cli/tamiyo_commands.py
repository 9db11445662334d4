"""Tamiyo's part of the ``esper`` command: ``serve tamiyo`` options and ``esper policy``.

Imports of torch and the policy code happen inside the handlers so that ``esper --help``
stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_tamiyo_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, help="tamiyo: policy file (.json or .safetensors; default: the shipped "
                                                   "initial policy)")
    parser.add_argument("--instance", default="1", help="tamiyo: this instance's name, unique in the group and stable "
                                                       "across restarts (it names the transactional id)")
    parser.add_argument("--scatter", choices=["auto", "native", "torch_scatter"], default="auto",
                        help="tamiyo: scatter backend (auto: the faster one, measured at start)")
    parser.add_argument("--device", default="cpu", help="tamiyo: torch device for the policy")


def tamiyo_service(args: argparse.Namespace, settings, codec):
    from services.tamiyo.service import Tamiyo

    return Tamiyo(settings.kafka, codec, policy_path=args.policy, instance=args.instance, scatter=args.scatter,
                  device=args.device)


def add_policy_command(sub) -> None:
    p = sub.add_parser(
        "policy", help="Tamiyo's policies: show one, bootstrap the initial one, train from recorded runs"
    )
    p.add_argument("action", choices=["show", "bootstrap", "train"])
    p.add_argument("path", nargs="?", type=Path, help="show: the policy (default: the shipped initial policy)")
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="train: recorded runs to learn from")
    p.add_argument("--from", dest="start", type=Path, help="train: policy to start from (default: the initial one)")
    p.add_argument("--out", type=Path, help="where to write the new policy (default: STATE_DIR/policies)")
    p.add_argument("--name", help="file name stem (default: the version)")
    p.add_argument("--samples", type=int, default=4000, help="bootstrap: synthetic runs")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=None, metavar="WIDTH",
                   help="bootstrap: the policy's hidden width (default: the shipped policy's)")
    p.set_defaults(func=_cmd_policy)


def _cmd_policy(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings
    from services.core.errors import UsageError
    from services.core.progress import progress_bar
    from services.tamiyo.policy_store import INITIAL_POLICY, load_policy, save_policy

    if args.action == "show":
        _, record = load_policy(args.path or INITIAL_POLICY)
        print(record.model_dump_json(indent=2))
        return 0
    out = args.out or load_settings().state_dir / "policies"
    bar = sys.stderr.isatty()
    if args.action == "bootstrap":
        from services.tamiyo.teacher import BOOTSTRAP_HIDDEN, bootstrap_policy

        if args.hidden is not None and args.hidden < 1:
            raise UsageError(f"--hidden must be at least 1 (got {args.hidden})")
        with progress_bar("bootstrap (synthetic runs vs the heuristic teacher)", args.epochs, bar) as advance:
            policy, metrics = bootstrap_policy(samples=args.samples, epochs=args.epochs, seed=args.seed,
                                               hidden=args.hidden or BOOTSTRAP_HIDDEN,
                                               progress=lambda done, total: advance(1))
        trained_on = f"synthetic teacher ({args.samples} runs, {args.epochs} epochs, seed {args.seed})"
    else:
        if not args.runs:
            raise UsageError("policy train needs --runs RUN_ID [RUN_ID ...]")
        from services.oona.admin import wait_for_broker
        from services.oona.codec import make_codec
        from services.tamiyo.training import train_from_runs

        settings = load_settings()
        wait_for_broker(settings.kafka)
        start, _ = load_policy(args.start or INITIAL_POLICY)
        with progress_bar("policy training on recorded runs", args.epochs, bar) as advance:
            policy, metrics = train_from_runs(settings.kafka, make_codec(settings.kafka.schema_registry_url), start,
                                              args.runs, epochs=args.epochs, seed=args.seed,
                                              progress=lambda done, total: advance(1))
        trained_on = "runs " + ",".join(args.runs)
    path = save_policy(policy, out, trained_on, metrics, name=args.name)
    print(f"policy {policy.version()} written to {path} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    return 0
