"""``esper report --experiment ID``: the ``experiments`` view of one experiment, printed and drawn.

The text table has one line per arm: n, validation and test accuracy as ``mean ± 95 % CI``,
mean parameters, training seconds, the gain per 1k added parameters against ``no_adapt``, and
the validation accuracy as a fraction of the best static arm's with no more parameters than
the adaptive arm (the issue's "≥ 95 %" criterion; blank when no static arm is that small). The
HTML page holds the same table, the per-run rows (``experiment_runs``) and one figure: mean
validation accuracy ± CI against mean parameters, one point per arm.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from services.nissa.errors import UnknownRunError
from services.nissa.plots import Plot, experiment_plot
from services.nissa.report import STYLE, html_figure, html_table
from services.nissa.sandbox import snapshot

ARM_ORDER = ("adaptive", "no_adapt", "static_final", "static_width")
COLUMNS = ("arm", "n", "val acc (mean ± 95% CI)", "test acc (mean ± 95% CI)", "parameters", "train s",
           "gain / 1k params", "val vs best static ≤ params")
RUN_COLUMNS = ("arm", "seed", "run", "status", "val acc", "test acc", "parameters", "train s")


@dataclass(frozen=True)
class ArmRow:
    arm: str
    dataset: str | None
    n: int
    val_mean: float | None
    val_ci95: float | None
    test_mean: float | None
    test_ci95: float | None
    parameters: float | None
    train_seconds: float | None
    gain_per_1k_params: float | None


@dataclass
class ExperimentData:
    experiment_id: str
    arms: list[ArmRow]
    runs: list[tuple]

    def relative_to_best_static(self) -> float | None:
        """Adaptive mean val acc / the best static arm's with no more parameters than the adaptive arm."""
        by_arm = {a.arm: a for a in self.arms}
        adaptive = by_arm.get("adaptive")
        if adaptive is None or adaptive.val_mean is None or adaptive.parameters is None:
            return None
        statics = [a.val_mean for a in self.arms if a.arm.startswith("static") and a.val_mean is not None
                   and a.parameters is not None and a.parameters <= adaptive.parameters]
        return adaptive.val_mean / max(statics) if statics and max(statics) > 0 else None


def load_experiment(con: duckdb.DuckDBPyConnection, experiment_id: str) -> ExperimentData:
    rows = con.execute(
        "SELECT arm, dataset, n, val_mean, val_ci95, test_mean, test_ci95, parameters, train_seconds, "
        "gain_per_1k_params FROM experiments WHERE experiment_id = ?", [experiment_id]).fetchall()
    runs = con.execute(
        "SELECT arm, seed, run_id, status, validation_accuracy, test_accuracy, parameters, train_seconds "
        "FROM experiment_runs WHERE experiment_id = ? ORDER BY seed, arm", [experiment_id]).fetchall()
    if not rows and not runs:
        raise UnknownRunError(f"experiment {experiment_id!r} is not in the Nissa database "
                              "(see `esper sql \"SELECT DISTINCT experiment_id FROM experiment_runs\"`)")
    arms = sorted((ArmRow(*r) for r in rows), key=lambda a: ARM_ORDER.index(a.arm) if a.arm in ARM_ORDER else 99)
    return ExperimentData(experiment_id, arms, runs)


def _pm(mean: float | None, ci: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f} ± {ci:.4f}" if ci is not None else f"{mean:.4f}"


def table_rows(data: ExperimentData) -> list[tuple[str, ...]]:
    relative = data.relative_to_best_static()
    return [(a.arm, str(a.n), _pm(a.val_mean, a.val_ci95), _pm(a.test_mean, a.test_ci95),
             f"{a.parameters:.0f}" if a.parameters is not None else "",
             f"{a.train_seconds:.1f}" if a.train_seconds is not None else "",
             f"{a.gain_per_1k_params:+.4f}" if a.gain_per_1k_params is not None else "",
             f"{relative:.1%}" if a.arm == "adaptive" and relative is not None else "")
            for a in data.arms]


def text_table(data: ExperimentData) -> str:
    """The arms as a Markdown table (what `esper report --experiment` prints, and what the README shows)."""
    rows = [COLUMNS, *table_rows(data)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])])


def render(data: ExperimentData) -> tuple[str, Plot]:
    plot = experiment_plot(data.experiment_id, [(a.arm, a.parameters, a.val_mean, a.val_ci95) for a in data.arms])
    title = f"Esper experiment {data.experiment_id}"
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>generated {datetime.now(UTC).isoformat(timespec='seconds')} from Nissa (view experiments)</p>"
            f"<h2>Arms</h2>{html_table(COLUMNS, table_rows(data))}{html_figure(plot)}"
            f"<h2>Runs</h2>{html_table(RUN_COLUMNS, data.runs)}</body></html>")
    return page, plot


def write_experiment_report(db: Path, experiment_id: str, out: Path) -> ExperimentData:
    with snapshot(db) as con:
        data = load_experiment(con, experiment_id)
    page, _ = render(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return data
