"""``esper experiment CONFIG --seeds 0 1 2 [--arms ...]``: the arms of a config over random seeds.

Each arm is a normal run on the bus (``services/tolaria/experiment.py``); the command prints one
line per arm as it ends and, at the end, the arms' mean ± 95 % CI computed from those results
(the same arithmetic as Nissa's ``experiments`` view, which ``esper report --experiment ID``
reads once Nissa has the runs).
"""

from __future__ import annotations

import argparse
import sys

from services.core.errors import UsageError
from services.tolaria.config import ARMS, DEFAULT_ARMS


def cmd_experiment(args: argparse.Namespace) -> int:
    from services.cli.settings import load_settings
    from services.nissa.confidence import mean_ci95
    from services.tolaria.config import ConfigError, ExperimentTag, load_config
    from services.tolaria.experiment import ArmResult, new_experiment_id, run_experiment
    from services.tolaria.experiment_plan import ordered_arms

    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        raise UsageError("--seeds must be distinct non-negative integers")
    cfg = load_config(args.config)
    arms = ordered_arms(args.arms)
    experiment_id = args.experiment_id or new_experiment_id(cfg.name)
    try:
        ExperimentTag(id=experiment_id, arm="adaptive")
    except ValueError:
        raise ConfigError(f"experiment id {experiment_id!r} must be 1-56 letters, digits, '.', '_' or '-'") from None
    print(f"experiment {experiment_id}: {cfg.name}, arms {' '.join(arms)}, seeds {' '.join(map(str, args.seeds))}",
          flush=True)

    def report(done: ArmResult) -> None:
        r = done.run
        print(f"  seed {done.seed} {done.arm:12} {r.run_id}: val_acc={r.validation_accuracy:.4f} "
              f"test_acc={r.test_accuracy:.4f} params={r.parameter_count} wall={done.wall_s:.1f}s "
              f"seeds={r.seed_states}", flush=True)

    results = run_experiment(cfg, settings=load_settings(), seeds=args.seeds, arms=arms, experiment_id=experiment_id,
                             progress=args.progress, on_arm=report)
    for arm in arms:
        mine = [r for r in results if r.arm == arm]
        val, val_ci = mean_ci95([r.run.validation_accuracy for r in mine])
        test, test_ci = mean_ci95([r.run.test_accuracy for r in mine])
        params, _ = mean_ci95([r.run.parameter_count for r in mine])
        ci = lambda c: f" ± {c:.4f}" if c is not None else ""  # noqa: E731
        print(f"{arm:12} n={len(mine)} val_acc={val:.4f}{ci(val_ci)} test_acc={test:.4f}{ci(test_ci)} "
              f"params={params:.0f}")
    print(f"report: esper report --experiment {experiment_id}")
    return 0


def add_experiment_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a config's arms (adaptive, no_adapt, static_final, static_width; "
                                          "gromo on request) over random seeds; each arm is a normal run")
    p.add_argument("config", help="run config (YAML or JSON)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="random seeds (default: 0 1 2)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="ARM",
                   help=f"arms to run: {', '.join(ARMS)} (default: all but gromo, the gromo package's growth "
                        "to the adaptive arm's parameter count)")
    p.add_argument("--experiment-id", help="name the experiment (default: NAME-TIMESTAMP); runs are ID-ARM-sSEED")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="a progress bar over the arms on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_experiment)
