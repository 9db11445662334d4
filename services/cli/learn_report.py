"""The learning loop's report: per arm the mean validation accuracy (95 % CI over the held-out tasks), and the
paired differences of the new policy against each baseline, for the real runs and for the paired forks.

Pure: a ``LoopResult`` in, a dict (the JSON) and markdown out. A paired difference is taken per held-out task
(the same seed: the same data; for forks also the same parent state at the fork epoch), then averaged, with
Student's t over the tasks (``services.nissa.confidence``, the same arithmetic as Nissa's ``experiments`` view).
"""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.learning_loop import ARMS, ArmRun, LoopResult, by_arm
from services.nissa.confidence import mean_ci95

BASELINES = ("promoted", "random", "heuristic", "no_adapt")


def _summary(values: list[float]) -> dict:
    mean, ci = mean_ci95(values) if values else (None, None)
    return {"n": len(values), "mean": mean, "ci95": ci}


def _paired(runs: dict[str, list[ArmRun]], a: str, b: str) -> dict:
    mine = {r.seed: r.validation_accuracy for r in runs[a]}
    other = {r.seed: r.validation_accuracy for r in runs[b]}
    seeds = sorted(set(mine) & set(other))
    diffs = [mine[s] - other[s] for s in seeds]
    return {"seeds": seeds, "differences": diffs, **_summary(diffs)}


def report_data(result: LoopResult) -> dict:
    plan = result.plan
    out: dict = {
        "loop_id": plan.loop_id, "config": plan.config.name, "epochs": plan.config.epochs,
        "train_seeds": list(plan.train_seeds), "heldout_seeds": list(plan.heldout_seeds),
        "exploration": plan.exploration, "fork_epoch": plan.fork_epoch, "reward": plan.reward,
        "parameter_charge": plan.parameter_charge,
        "promoted": result.promoted, "new": result.new_version, "policy_path": result.policy_path,
        "train_metrics": result.train_metrics, "explored_decisions": result.explored_decisions,
        "collected": [vars(r) for r in result.collected],
        "runs": [vars(r) for r in result.runs],
    }
    for kind in ("real", "fork"):
        runs = by_arm(result.runs, kind)
        out[kind] = {
            "arms": {arm: {**_summary([r.validation_accuracy for r in runs[arm]]),
                           "germinations": [r.germinations for r in runs[arm]],
                           "parameters": [r.parameters for r in runs[arm]]} for arm in ARMS},
            "paired": {f"new-{b}": _paired(runs, "new", b) for b in BASELINES},
        }
    return out


def _fmt(summary: dict) -> str:
    if summary["mean"] is None:
        return "—"
    ci = f" ± {summary['ci95']:.4f}" if summary["ci95"] is not None else ""
    return f"{summary['mean']:.4f}{ci}"


def _signed(summary: dict) -> str:
    if summary["mean"] is None:
        return "—"
    ci = f" ± {summary['ci95']:.4f}" if summary["ci95"] is not None else ""
    return f"{summary['mean']:+.4f}{ci}"


def markdown(data: dict) -> str:
    lines = [
        f"# Learning loop {data['loop_id']}",
        "",
        f"Task family `{data['config']}` ({data['epochs']} epochs); training tasks: seeds "
        f"{', '.join(map(str, data['train_seeds']))}; held-out tasks: seeds "
        f"{', '.join(map(str, data['heldout_seeds']))}.",
        f"Collected {len(data['collected'])} runs under the promoted policy `{data['promoted']}` with exploration "
        f"{data['exploration']} ({data['explored_decisions']} explored germinations); trained "
        f"`{data['new']}` on {int(data['train_metrics'].get('samples', 0))} germinations "
        f"(reward: the gate's contribution in validation {data['reward']}, parameter charge "
        f"{data['parameter_charge']}; mean reward {data['train_metrics'].get('mean_reward', 0.0):+.4f}).",
        "",
    ]
    forks = f"Paired forks (of each task's no_adapt run at the end of epoch {data['fork_epoch']})"
    for kind, title in (("real", "Real runs (from epoch 0)"), ("fork", forks)):
        section = data[kind]
        lines += [f"## {title}", "", "| arm | val acc (mean ± 95 % CI) | germinations per task | parameters |",
                  "|---|---|---|---|"]
        for arm in ARMS:
            a = section["arms"][arm]
            lines.append(f"| {arm} | {_fmt(a)} | {', '.join(map(str, a['germinations']))} | "
                         f"{', '.join(map(str, a['parameters']))} |")
        lines += ["", "| paired difference | mean ± 95 % CI | per task |", "|---|---|---|"]
        for name, p in section["paired"].items():
            lines.append(f"| {name} | {_signed(p)} | {', '.join(f'{d:+.4f}' for d in p['differences'])} |")
        lines.append("")
    lines += ["Runs (Nissa: `esper sql \"SELECT run_id, parent_run_id, fork_epoch, final_validation_accuracy FROM "
              f"runs WHERE run_id LIKE '{data['loop_id']}-%'\"`):", "",
              "| run | arm | kind | seed | val acc | test acc | parameters | germinations |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["collected"] + data["runs"]:
        lines.append(f"| {r['run_id']} | {r['arm']} | {r['kind']} | {r['seed']} | {r['validation_accuracy']:.4f} | "
                     f"{r['test_accuracy']:.4f} | {r['parameters']} | {r['germinations']} |")
    return "\n".join(lines) + "\n"


def write_report(result: LoopResult, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = report_data(result)
    json_path = directory / f"learn-{data['loop_id']}.json"
    md_path = directory / f"learn-{data['loop_id']}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown(data))
    return md_path, json_path
