"""``esper report``: one self-contained HTML page per run (or two runs compared) from Nissa's DuckDB.

The page holds no external reference: every figure is a PNG embedded as base64 in an
``<img>`` inside ``<figure data-plot=NAME data-KEY=VALUE ...>``, the ``data-`` attributes
being what the figure drew (``plots.Plot.drawn``: points per line, final values, markers),
so a reader (or a test) can check the picture against SQL. Sections:

1. accuracy per epoch (train dashed, validation solid) with germinate / advance /
   fossilize / cull markers (both runs overlaid in comparison mode);
2. parameter count per epoch (total and seeds);
3. per run: the seed lifecycle timeline per slot, the layer health heatmap;
4. final numbers (one row per run) and the decisions that did something;
5. when one run is a fork of the other (``esper run --fork``), the two aligned from the fork
   point: per epoch after it, both validation accuracies and their difference (a fork's epochs
   carry on its parent's numbering, so the curves of section 1 align too).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.nissa.plots import Plot, accuracy_plot, health_plot, parameter_plot, timeline_plot
from services.nissa.report_data import RunData, load_run
from services.nissa.sandbox import snapshot

FINAL_COLUMNS = ("run", "status", "epochs", "final train acc", "final val acc", "parameters", "seed parameters",
                 "germinated", "fossilized", "culled")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
figure { margin: 1.5em 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
img { max-width: 100%; } table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
"""


@dataclass(frozen=True)
class ForkAlignment:
    parent: str
    fork: str
    fork_epoch: int
    rows: list[tuple[int, float | None, float | None, float | None]]  # epoch, parent val, fork val, fork - parent


@dataclass
class Report:
    html: str
    runs: list[RunData]
    plots: list[Plot]
    fork: ForkAlignment | None = None


def final_numbers(run: RunData) -> tuple:
    last = -1 if run.epochs else None

    def at(values: list) -> object:
        return values[last] if last is not None else None
    s = run.summary
    return (run.run_id, s.get("status"), len(run.epochs), at(run.train_accuracy), at(run.validation_accuracy),
            at(run.parameter_count), at(run.seed_parameter_count), s.get("seeds_germinated"),
            s.get("seeds_fossilized"), s.get("seeds_culled"))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def html_table(columns: tuple[str, ...] | list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(plot: Plot) -> str:
    attributes = " ".join(f'data-{html.escape(k.replace(":", "-").replace("_", "-"))}="{html.escape(str(v))}"'
                          for k, v in plot.drawn.items())
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure data-plot="{html.escape(plot.name)}" {attributes}><figcaption>{html.escape(plot.title)}'
            f'</figcaption><img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}"></figure>')


def align_fork(runs: list[RunData]) -> ForkAlignment | None:
    """The epochs after the fork point side by side, when one of two runs is the other's fork."""
    if len(runs) != 2:
        return None
    for parent, fork in (runs, runs[::-1]):
        epoch = fork.summary.get("fork_epoch")
        if fork.summary.get("parent_run_id") == parent.run_id and isinstance(epoch, int):
            ours = dict(zip(parent.epochs, parent.validation_accuracy, strict=True))
            theirs = dict(zip(fork.epochs, fork.validation_accuracy, strict=True))
            rows = [(e, ours.get(e), theirs.get(e),
                     theirs[e] - ours[e] if ours.get(e) is not None and theirs.get(e) is not None else None)
                    for e in sorted({e for e in (*ours, *theirs) if e > epoch})]
            return ForkAlignment(parent.run_id, fork.run_id, epoch, rows)
    return None


def _fork_section(alignment: ForkAlignment | None) -> str:
    if alignment is None:
        return ""
    a = alignment
    return (f'<h2>From the fork point</h2><p data-fork-epoch="{a.fork_epoch}">{html.escape(a.fork)} is a fork of '
            f"{html.escape(a.parent)} from the end of epoch {a.fork_epoch}: the epochs after it, side by side.</p>"
            + html_table(("epoch", f"{a.parent} val acc", f"{a.fork} val acc", "fork - parent"), a.rows))


def render(runs: list[RunData]) -> Report:
    """The HTML page for one run, or several overlaid (the first is the subject)."""
    plots = [accuracy_plot(runs), parameter_plot(runs)]
    for run in runs:
        plots += [timeline_plot(run), health_plot(run)]
    title = "Esper run " + " vs ".join(r.run_id for r in runs)
    decisions = "".join(
        f"<h3>Decisions that acted — {html.escape(r.run_id)}</h3>"
        + (html_table(("epoch", "action", "seed", "reason"), r.decisions) if r.decisions else "<p>none</p>")
        for r in runs)
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>generated {datetime.now(UTC).isoformat(timespec='seconds')} from Nissa</p>"
            f"<h2>Final numbers</h2>{html_table(FINAL_COLUMNS, [final_numbers(r) for r in runs])}"
            f"{_fork_section(align_fork(runs))}"
            f"<h2>Curves</h2>{''.join(html_figure(p) for p in plots[:2])}"
            f"<h2>Seeds and health</h2>{''.join(html_figure(p) for p in plots[2:])}"
            f"<h2>Decisions</h2>{decisions}</body></html>")
    return Report(page, runs, plots, align_fork(runs))


def write_report(db: Path, run_id: str, out: Path, compare: str | None = None) -> Report:
    """Read the run(s) from a sandboxed snapshot of the DuckDB file (``sandbox.snapshot``), render, write ``out``."""
    with snapshot(db) as con:
        runs = [load_run(con, run_id)] + ([load_run(con, compare)] if compare else [])
    report = render(runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    return report
