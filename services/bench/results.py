"""Benchmark results: a side-by-side table on the terminal and a JSON file."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path


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
    details: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.baseline <= 0 or self.value <= 0:
            return 0.0
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def overhead(self) -> float:
        return self.value / self.baseline - 1.0 if self.baseline > 0 else 0.0

    @property
    def meets_target(self) -> bool | None:
        if self.max_overhead is not None:
            return self.overhead <= self.max_overhead
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def as_dict(self) -> dict:
        extra = {"overhead": self.overhead} if self.max_overhead is not None else {}
        return asdict(self) | {"ratio": self.ratio, "meets_target": self.meets_target} | extra


def print_table(results: list[BenchResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="esper bench")
    for column in ("benchmark", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for r in results:
        verdict = "[green]met[/]" if r.meets_target else "[red]missed[/]"
        if r.max_overhead is not None:
            target = f"overhead {r.overhead:+.1%} (<= {r.max_overhead:.0%}) {verdict}"
        elif r.target is not None:
            target = f"{'>=' if r.higher_is_better else '<='} {r.target:,.0f} {verdict}"
        else:
            target = ""
        table.add_row(
            r.name, f"{r.value:,.1f} {r.unit}", f"{r.baseline:,.1f} ({r.baseline_name})", f"{r.ratio:,.1f}x", target
        )
    Console().print(table)


def write_json(results: list[BenchResult], path: Path) -> None:
    import confluent_kafka
    import fastavro

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "versions": {"confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0],
                     "fastavro": fastavro.__version__},
        "results": [r.as_dict() for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
