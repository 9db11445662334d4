"""Tamiyo's part of the ``esper`` command: ``serve tamiyo`` options, ``esper policy`` and the check of
``esper run --policy VERSION``.

Imports of torch and the policy code happen inside the handlers so that ``esper --help``
stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_tamiyo_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, help="tamiyo: the policy file known without library.policies and "
                                                   "promoted while the log promotes none (default: the shipped "
                                                   "initial policy)")
    parser.add_argument("--scatter", choices=["auto", "native", "torch_scatter"], default="auto",
                        help="tamiyo: scatter backend (auto: the faster one, measured at start)")
    parser.add_argument("--device", default="cpu", help="tamiyo: torch device for the policy")


def tamiyo_service(args: argparse.Namespace, settings, codec):
    from services.tamiyo.service import Tamiyo

    return Tamiyo(settings.kafka, codec, policy_path=args.policy, instance=args.instance or "1", scatter=args.scatter,
                  device=args.device)


def add_policy_command(sub) -> None:
    p = sub.add_parser(
        "policy", help="Tamiyo's policies: list the versions on the bus, publish one, promote one, show a file, "
                       "bootstrap the initial one, train (and publish) one from recorded runs"
    )
    p.add_argument("action", choices=["list", "publish", "promote", "show", "bootstrap", "train"])
    p.add_argument("path", nargs="?", help="show/publish: the policy file (.json; default: the shipped initial "
                                           "policy); promote: the VERSION")
    p.add_argument("--reason", default="", help="promote: why (kept on the promotion event)")
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
    if args.action in ("list", "publish", "promote"):
        return _policy_on_the_bus(args)
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
    if args.action == "train":  # the broker is there: every Tamiyo learns of the new version (promote it to use it)
        from services.tamiyo.policy_registry import published_record
        from services.tamiyo.policy_topics import publish_policy

        settings, codec = _connected()
        _, record = load_policy(path)
        publish_policy(settings.kafka, codec, published_record(policy, record))
        print(f"policy {policy.version()} published on library.policies (esper policy promote {policy.version()})")
    return 0


def _registry(settings, codec):
    """Every version on the bus and the promotion, as each Tamiyo instance folds them."""
    from services.tamiyo.policy_registry import PolicyRegistry
    from services.tamiyo.policy_store import INITIAL_POLICY, load_policy
    from services.tamiyo.policy_topics import load_registry

    return load_registry(settings.kafka, codec, PolicyRegistry(*load_policy(INITIAL_POLICY)))


def _connected():
    from services.cli.main import _connected

    return _connected()


def _policy_on_the_bus(args: argparse.Namespace) -> int:
    from contracts import PolicyPromoted
    from services.core.errors import UsageError
    from services.tamiyo.policy_registry import published_record
    from services.tamiyo.policy_store import PolicyError, load_policy
    from services.tamiyo.policy_topics import promote_policy, publish_policy

    if args.action == "publish":
        if not args.path:
            raise UsageError("policy publish needs the policy FILE (.json beside its .safetensors)")
        policy, record = load_policy(args.path)  # checked here: a bad file never reaches the bus
        settings, codec = _connected()
        publish_policy(settings.kafka, codec, published_record(policy, record))
        print(f"policy {record.version} published on library.policies (esper policy promote {record.version})")
        return 0
    if args.action == "promote":
        if not args.path:
            raise UsageError("policy promote needs a VERSION (see esper policy list)")
        settings, codec = _connected()
        registry = _registry(settings, codec)
        problem = registry.why_not(args.path)
        if problem is not None:
            raise PolicyError(f"cannot promote: {problem} (see esper policy list)")
        promote_policy(settings.kafka, codec, PolicyPromoted(version=args.path, reason=args.reason[:1000]))
        print(f"policy {args.path} promoted: it decides every run that names no version, from the next run on")
        return 0
    settings, codec = _connected()
    registry = _registry(settings, codec)
    print(f"{'VERSION':16}  {'STATUS':9}  TRAINED ON")
    for version, known in registry.versions.items():
        status = "promoted" if version == registry.promoted else "shipped" if known.shipped else ""
        print(f"{version:16}  {status:9}  {known.trained_on[:100]}")
    for version, reason in registry.refused.items():
        print(f"{version[:16]:16}  {'refused':9}  {reason[:200]}")
    if registry.why_not(registry.promoted) is not None:
        print(f"promoted {registry.promoted}: {registry.why_not(registry.promoted)}")
    return 0


def check_policy_version(settings, version: str) -> None:
    """``esper run --policy VERSION``: one line (InputError, PolicyError) unless Tamiyo can decide with it."""
    import re

    from contracts.policies import POLICY_VERSION_PATTERN
    from services.core.errors import InputError
    from services.oona.admin import wait_for_broker
    from services.oona.codec import make_codec
    from services.tamiyo.policy_store import PolicyError

    if not re.fullmatch(POLICY_VERSION_PATTERN, version):
        raise InputError(f"policy version {version!r} is not one (gnn- and 12 hex digits; see esper policy list)")
    wait_for_broker(settings.kafka)
    problem = _registry(settings, make_codec(settings.kafka.schema_registry_url)).why_not(version)
    if problem is not None:
        raise PolicyError(f"{problem}; see esper policy list")
