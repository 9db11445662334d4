"""What a run shows its user: a progress bar on a terminal, one line per epoch otherwise, or nothing (``-q``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from contracts import SeedState, SeedTransition
from services.tolaria.trainer import EpochStats

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class ProgressReporter:
    def __init__(self, run_id: str, epochs: int, enabled: bool, bar: Progress | None = None,
                 task: TaskID | None = None) -> None:
        self.run_id = run_id
        self.epochs = epochs
        self.enabled = enabled
        self.bar = bar  # a rich Progress (and its task) while a bar is shown
        self.task = task

    def batch_callback(self, epoch: int) -> Callable[[int, int], None] | None:
        """What the trainer calls after each batch (moves the bar), or None without a bar."""
        bar, task = self.bar, self.task
        if bar is None or task is None:
            return None

        def update(step: int, steps: int) -> None:
            bar.update(task, completed=epoch + step / steps)

        return update

    def epoch_done(self, epoch: int, stats: EpochStats, val_acc: float, transitions: list[SeedTransition],
                   counts: dict[SeedState, int]) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=epoch + 1, description=f"{self.run_id} val_acc={val_acc:.3f}")
            for t in transitions:
                self.bar.console.print(f"  epoch {epoch + 1}: seed {t.layer_name}[{t.seed_idx}] "
                                       f"{t.from_state.value} -> {t.to_state.value} ({t.reason})")
        elif self.enabled:
            seeds = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n and s.value != "dormant")
            print(f"epoch {epoch + 1}/{self.epochs} loss={stats.train_loss:.4f} train_acc={stats.train_accuracy:.3f} "
                  f"val_acc={val_acc:.3f}" + (f" seeds: {seeds}" if seeds else ""), flush=True)


@contextlib.contextmanager
def progress_reporter(run_id: str, epochs: int, start_epoch: int, enabled: bool) -> Iterator[ProgressReporter]:
    """A reporter with a bar on a terminal's stderr while the block runs; plain lines (or nothing) elsewhere."""
    if not (enabled and sys.stderr.isatty()):
        yield ProgressReporter(run_id, epochs, enabled)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total}"),
                  TimeRemainingColumn(), transient=False) as bar:
        yield ProgressReporter(run_id, epochs, enabled, bar, bar.add_task(run_id, total=epochs, completed=start_epoch))
