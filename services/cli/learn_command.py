"""``esper learn CONFIG``: the learning loop (``learning_loop``) on the running system, and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_learn(args: argparse.Namespace) -> int:
    from services.cli.learn_report import report_data, write_report
    from services.cli.learning_loop import ArmRun, Loop, LoopPlan
    from services.cli.settings import load_settings
    from services.oona.admin import wait_for_broker
    from services.oona.codec import make_codec
    from services.tolaria.config import load_config
    from services.tolaria.experiment import new_experiment_id

    cfg = load_config(args.config)
    plan = LoopPlan(args.loop_id or new_experiment_id(f"learn-{cfg.name}"), cfg, tuple(args.train_seeds),
                    tuple(args.heldout_seeds), exploration=args.exploration, fork_epoch=args.fork_epoch,
                    train_epochs=args.train_epochs, reward=args.reward, parameter_charge=args.parameter_charge)
    settings = load_settings()
    wait_for_broker(settings.kafka)
    print(f"learn {plan.loop_id}: {cfg.name}, training seeds {' '.join(map(str, plan.train_seeds))}, "
          f"held-out seeds {' '.join(map(str, plan.heldout_seeds))}", flush=True)

    def said(r: ArmRun) -> None:
        print(f"  {r.kind:5} {r.arm:10} seed {r.seed} {r.run_id}: val_acc={r.validation_accuracy:.4f} "
              f"germinations={r.germinations} params={r.parameters}", flush=True)

    result = Loop(plan, settings, make_codec(settings.kafka.schema_registry_url), progress=args.progress,
                  on_run=said).run()
    md, js = write_report(result, args.reports or settings.state_dir / "reports")
    data = report_data(result)
    print(f"policy {result.new_version} trained from {len(result.collected)} runs and published "
          f"(esper policy promote {result.new_version})")
    for kind in ("real", "fork"):
        for name, p in data[kind]["paired"].items():
            if p["mean"] is not None:
                ci = f" ± {p['ci95']:.4f}" if p["ci95"] is not None else ""
                print(f"{kind:5} {name:14} {p['mean']:+.4f}{ci} (n={p['n']})")
    print(f"report: {md} {js}")
    return 0


def add_learn_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn", help="the learning loop: collect runs of the promoted policy with exploration, "
                                     "train a new version on them, evaluate it against the baselines on held-out "
                                     "tasks (real runs and paired forks), write a report")
    p.add_argument("config", help="the task family's run config (Tamiyo drives the lifecycle: auto_advance false)")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[10, 11, 12], metavar="SEED",
                   help="training tasks (random seeds: data and initial weights; default: 10 11 12)")
    p.add_argument("--heldout-seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="held-out tasks (default: 0 1 2)")
    p.add_argument("--exploration", type=float, default=0.3,
                   help="collect: chance per epoch of a random germination (default: 0.3)")
    p.add_argument("--fork-epoch", type=int, default=2, help="the paired forks start after this epoch (default: 2)")
    p.add_argument("--train-epochs", type=int, default=10, help="policy training epochs (default: 10)")
    p.add_argument("--reward", choices=["loss", "accuracy"], default="loss",
                   help="train: a seed's reward is the gate's contribution in validation loss (default) or accuracy")
    p.add_argument("--parameter-charge", type=float, default=0.0,
                   help="train: minus this times seed parameters / host parameters (default 0: arms are judged on "
                        "accuracy; esper policy train charges 0.05)")
    p.add_argument("--loop-id", help="name the loop (default: learn-NAME-TIMESTAMP); its runs are LOOP-...")
    p.add_argument("--reports", type=Path, help="report folder (default: STATE_DIR/reports)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bars on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_learn)
