"""Benchmark results: a side-by-side table on the terminal and a JSON file.

Each figure sits beside a baseline (what a naive implementation does) and, where the issue names
one, beside its ceilings: the physical limit of the same client on the same machine, measured in
the same run (``Ceiling``). A figure is reported as a fraction of each ceiling (for a time, the
ceiling's time over the figure's: 1.0 is the limit itself), and a ceiling may carry the figure's
target as the smallest acceptable fraction.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Ceiling:
    """The same work without what the figure adds (decoding, encoding, Python), in the figure's unit."""

    name: str
    value: float
    # The target as a fraction of this ceiling (0.8: the figure must reach 80 % of it); None: reported only.
    min_fraction: float | None = None


@dataclass
class BenchResult:
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    higher_is_better: bool = True
    target: float | None = None
    # For costs measured against a baseline: the largest acceptable relative overhead (0.05 = 5%).
    max_overhead: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # JSON values: numbers, strings, nested tables
    # The first is the primary one (``ceiling_name``, ``ceiling``, ``fraction_of_ceiling`` in the JSON).
    ceilings: list[Ceiling] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        if self.baseline <= 0 or self.value <= 0:
            return 0.0
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def overhead(self) -> float:
        return self.value / self.baseline - 1.0 if self.baseline > 0 else 0.0

    def fraction_of(self, ceiling: Ceiling) -> float:
        """How close the figure comes to ``ceiling``: 1.0 at the limit, 0.5 at half its rate (or twice its time)."""
        if ceiling.value <= 0 or self.value <= 0:
            return 0.0
        return self.value / ceiling.value if self.higher_is_better else ceiling.value / self.value

    def meets_ceiling(self, ceiling: Ceiling) -> bool | None:
        return None if ceiling.min_fraction is None else self.fraction_of(ceiling) >= ceiling.min_fraction

    @property
    def meets_absolute_target(self) -> bool | None:
        if self.max_overhead is not None:
            return self.overhead <= self.max_overhead
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def meets_target(self) -> bool | None:
        """Every target the figure carries (absolute, overhead, fraction of each ceiling) met; None: none carried."""
        verdicts = [self.meets_absolute_target, *(self.meets_ceiling(c) for c in self.ceilings)]
        carried = [v for v in verdicts if v is not None]
        return all(carried) if carried else None

    @property
    def fraction_of_ceiling(self) -> float | None:
        return self.fraction_of(self.ceilings[0]) if self.ceilings else None

    def as_dict(self) -> dict[str, Any]:
        primary = self.ceilings[0] if self.ceilings else None
        out: dict[str, Any] = {
            "name": self.name, "unit": self.unit, "value": self.value,
            "baseline_name": self.baseline_name, "baseline": self.baseline, "ratio": self.ratio,
            "higher_is_better": self.higher_is_better, "target": self.target, "max_overhead": self.max_overhead,
            "ceiling_name": primary.name if primary else None, "ceiling": primary.value if primary else None,
            "fraction_of_ceiling": self.fraction_of_ceiling,
            "ceilings": [{"name": c.name, "value": c.value, "fraction_of_ceiling": self.fraction_of(c),
                          "min_fraction": c.min_fraction, "meets_target": self.meets_ceiling(c)}
                         for c in self.ceilings],
            "meets_target": self.meets_target, "details": dict(self.details),
        }
        if self.max_overhead is not None:
            out["overhead"] = self.overhead
        return out


def _verdict(met: bool | None) -> str:
    return "" if met is None else " [green]met[/]" if met else " [red]missed[/]"


def ceiling_rows(result: BenchResult) -> list[tuple[str, str, str, str, str]]:
    """The table's rows under a figure, one per ceiling: its name, value, the figure's fraction, its target."""
    rows = []
    for c in result.ceilings:
        wanted = "" if c.min_fraction is None else f">= {c.min_fraction:.0%} of it{_verdict(result.meets_ceiling(c))}"
        rows.append((f"  ceiling: {c.name}", f"{c.value:,.1f} {result.unit}", "",
                     f"{result.fraction_of(c):.1%}", wanted))
    return rows


def print_table(results: list[BenchResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="esper bench (ratio: figure / baseline; under a figure, its ceilings: figure / ceiling)")
    for column in ("benchmark", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for r in results:
        verdict = _verdict(r.meets_absolute_target)
        if r.max_overhead is not None:
            target = f"overhead {r.overhead:+.1%} (<= {r.max_overhead:.0%}){verdict}"
        elif r.target is not None:
            target = f"{'>=' if r.higher_is_better else '<='} {r.target:,.0f}{verdict}"
        else:
            target = ""
        table.add_row(r.name, f"{r.value:,.1f} {r.unit}", f"{r.baseline:,.1f} ({r.baseline_name})",
                      f"{r.ratio:,.1f}x", target)
        for row in ceiling_rows(r):
            table.add_row(*row, style="dim")
    Console().print(table)


def write_json(results: list[BenchResult], path: Path, failed: dict[str, str] | None = None) -> None:
    """The results, the machine and its load; ``failed``: each figure that raised, with its error."""
    import confluent_kafka
    import fastavro

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus(),
                    "load_average": _load_average()},
        "versions": {"confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0],
                     "fastavro": fastavro.__version__},
        "results": [r.as_dict() for r in results],
        "failed": dict(failed or {}),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _load_average() -> list[float]:
    """1, 5 and 15 minute load averages at the end of the run (what ``uptime`` says): how shared the machine was."""
    import os

    return [round(v, 2) for v in os.getloadavg()]
