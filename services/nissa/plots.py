"""The report's figures (matplotlib, Agg backend): run data in, PNG bytes + what was drawn out.

Each function takes ``RunData`` (``report.py``) and returns a ``Plot``: the PNG and
``drawn``, numbers read back from the figure's own artists (points per line, markers), so a
test can check the picture against the database rather than against the inputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.patches import Patch  # noqa: E402

from services.nissa.report_data import EVENT_KINDS, RunData  # noqa: E402

STATE_COLOURS = {
    "dormant": "#e0e0e0", "germinated": "#9ecae1", "training": "#4292c6", "grafting": "#fd8d3c",
    "fossilized": "#31a354", "culled": "#de2d26",
}
EVENT_STYLE = {"germinate": ("^", "#4292c6"), "advance": (">", "#fd8d3c"), "fossilize": ("*", "#31a354"),
               "cull": ("x", "#de2d26")}
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    drawn: dict[str, float | int | str] = field(default_factory=dict)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def accuracy_plot(runs: list[RunData]) -> Plot:
    """Train (dashed) and validation accuracy per epoch, adaptation events marked on the validation curve."""
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn: dict[str, float | int | str] = {}
    for i, run in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        (val,) = ax.plot(run.epochs, run.validation_accuracy, color=colour, label=f"{run.run_id} validation")
        ax.plot(run.epochs, run.train_accuracy, color=colour, linestyle="--", alpha=0.6, label=f"{run.run_id} train")
        drawn[f"{run.run_id}:points"] = len(np.asarray(val.get_xdata()))
        drawn[f"{run.run_id}:final_validation"] = (round(float(np.asarray(val.get_ydata())[-1]), 4)
                                                   if len(run.epochs) else "")
        by_epoch = dict(zip(run.epochs, run.validation_accuracy, strict=True))
        markers = 0
        for kind in EVENT_KINDS:
            xs = [e.epoch for e in run.events if e.kind == kind and e.epoch in by_epoch]
            if xs:
                marker, mcolour = EVENT_STYLE[kind]
                ax.scatter(xs, [by_epoch[x] for x in xs], marker=marker, color=mcolour, s=80, zorder=3,
                           edgecolors="black", linewidths=0.5, label=kind if i == 0 else None)
                markers += len(xs)
        drawn[f"{run.run_id}:events"] = markers
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return Plot("accuracy", "Accuracy per epoch, adaptation events marked", _png(fig), drawn)


def parameter_plot(runs: list[RunData]) -> Plot:
    """Total parameters per epoch (solid) and the seeds' share of them (dotted)."""
    fig, ax = plt.subplots(figsize=(8, 3))
    drawn: dict[str, float | int | str] = {}
    for i, run in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        (total,) = ax.plot(run.epochs, run.parameter_count, color=colour, label=f"{run.run_id} total")
        ax.plot(run.epochs, run.seed_parameter_count, color=colour, linestyle=":", label=f"{run.run_id} seeds")
        drawn[f"{run.run_id}:points"] = len(np.asarray(total.get_xdata()))
        drawn[f"{run.run_id}:final_parameters"] = int(np.asarray(total.get_ydata())[-1]) if len(run.epochs) else ""
    ax.set_xlabel("epoch")
    ax.set_ylabel("parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Plot("parameters", "Parameter count per epoch", _png(fig), drawn)


def timeline_plot(run: RunData) -> Plot:
    """One row per seed slot (layer[seed]); bars coloured by lifecycle state over epochs."""
    seeds = sorted(run.seed_states)
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * max(1, len(seeds))))
    last = (max(run.epochs) + 1) if run.epochs else 1
    bars = 0
    for row, seed in enumerate(seeds):
        changes = run.seed_states[seed]
        spans = [(0, "dormant")] + changes
        for (start, state), (end, _) in zip(spans, [*spans[1:], (last, "")], strict=True):
            if end > start:
                ax.barh(row, end - start, left=start, color=STATE_COLOURS.get(state, "#999999"), edgecolor="white")
                bars += 1
    ax.set_yticks(range(len(seeds)), seeds)
    ax.set_xlim(0, last)
    ax.set_xlabel("epoch")
    ax.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLOURS.items()], fontsize=7, ncol=6,
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(seeds) < 3 else -0.15))
    return Plot(f"timeline-{run.run_id}", f"Seed lifecycle — {run.run_id}", _png(fig),
                {"seeds": len(seeds), "bars": bars})


def health_plot(run: RunData) -> Plot:
    """Mean health score per layer (rows) and epoch (columns)."""
    layers, epochs, grid = run.health_layers, run.health_epochs, run.health
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.5 * max(1, len(layers))))
    if layers and epochs:
        image = ax.imshow([[float("nan") if v is None else v for v in row] for row in grid], aspect="auto",
                          cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest",
                          extent=(min(epochs) - 0.5, max(epochs) + 0.5, len(layers) - 0.5, -0.5))
        fig.colorbar(image, ax=ax, label="mean health score")
        ax.set_yticks(range(len(layers)), layers)
    else:
        ax.text(0.5, 0.5, "no health signals", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    return Plot(f"health-{run.run_id}", f"Layer health — {run.run_id}", _png(fig),
                {"layers": len(layers), "epochs": len(epochs)})


def experiment_plot(experiment_id: str, arms: list[tuple[str, float | None, float | None, float | None]]) -> Plot:
    """Mean validation accuracy (± 95 % CI bars) against mean parameters: one point per arm
    ``(arm, parameters, val_mean, val_ci95)``."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn: dict[str, float | int | str] = {}
    for i, (arm, params, mean, ci) in enumerate(arms):
        if params is None or mean is None:
            continue
        ax.errorbar([params], [mean], yerr=[ci or 0.0], fmt="o", capsize=4, color=RUN_COLOURS[i % len(RUN_COLOURS)],
                    label=arm)
        drawn[f"{arm}:val_mean"] = round(float(mean), 4)
        drawn[f"{arm}:parameters"] = round(float(params), 1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (mean over seeds, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(experiment_id)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="lower right")
    return Plot("experiment", "Validation accuracy against parameters (mean ± 95 % CI per arm)", _png(fig), drawn)
