"""``esper bench --profile DIR``: each figure's own code path under cProfile, its top functions as text.

A bench marks the code its figure times with ``own_path()`` (not its baseline or its ceilings);
when a profile is being taken, that code and every Python thread started inside it (Tamiyo's
serving thread, the sink's committer) run under profilers of their own, merged per figure (and
per ``part``: replay from Kafka and from the archive, the decision at each graph size) into
``DIR/<figure>[-<part>].txt``. Threads already running, librdkafka's and DuckDB's native threads
and child processes are not seen. cProfile adds its own cost to every Python call (call-heavy code
reads about twice as slow), so a profiled run's figures are not the bench's figures: the file says
where the time goes, the unprofiled run says how much there is. The profilers' clock is each thread's
CPU time (``time.thread_time``), not the wall: on a shared machine the wall clock says mostly how long
the thread waited for a core, and a wait (a lock, a blocking ``consume``) costs nothing here.

    esper bench --only produce --events 50000 --profile reports/profiles   # -> reports/profiles/produce.txt
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

TOP_FUNCTIONS = 25
T = TypeVar("T")



@dataclass
class _Part:
    """A part of a figure's own path: its profilers (one per section and per thread started in one), and the
    wall and process CPU seconds its sections took (the CPU of every thread: librdkafka's and DuckDB's too)."""

    profilers: list[cProfile.Profile] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0


# While a profile is taken: each part of the figure's own path; None otherwise.
_taking: dict[str, _Part] | None = None
_lock = threading.Lock()


@contextmanager
def own_path(part: str = "") -> Iterator[None]:
    """The figure's own work: profiled (this thread and every thread started inside) while a profile is taken."""
    if _taking is None:
        yield
        return
    taken = _taking.setdefault(part, _Part())
    profilers = taken.profilers
    original = threading.Thread.run

    def run(thread: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)
        with _lock:
            profilers.append(profiler)
        profiler.enable()
        try:
            original(thread)
        finally:
            profiler.disable()

    mine = cProfile.Profile(time.thread_time)
    with _lock:
        profilers.append(mine)
    threading.Thread.run = run  # type: ignore[method-assign,assignment]
    start, cpu_start = time.perf_counter(), time.process_time()
    mine.enable()
    try:
        yield
    finally:
        mine.disable()
        taken.wall_s += time.perf_counter() - start
        taken.cpu_s += time.process_time() - cpu_start
        threading.Thread.run = original  # type: ignore[method-assign]


def profile_call(figure: str, work: Callable[[], T], out_dir: Path, top: int = TOP_FUNCTIONS) -> T:
    """``work()`` with its ``own_path`` sections profiled; their top ``top`` functions by own time written to
    ``out_dir/<figure>[-<part>].txt`` with the command, the load and the wall time."""
    global _taking
    _taking = {}
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        result = work()
    finally:
        taken, _taking = _taking, None
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    for part, measured in taken.items():
        name = f"{figure}-{part}" if part else figure
        header = [
            f"# esper bench profile: {name} (the figure's own code path, not its baseline or ceilings)",
            f"# command: {' '.join(['esper', *sys.argv[1:]])}",
            f"# when: {datetime.now(UTC).isoformat(timespec='seconds')}, the figure's wall {seconds:.1f} s "
            "under cProfile",
            f"# load average (1, 5, 15 min): before {_load(load_before)}, after {_load(os.getloadavg())}",
            f"# the own path: wall {measured.wall_s:.2f} s, process CPU {measured.cpu_s:.2f} s (all threads, native "
            "ones too: what the profile does not see is the difference from its total)",
            f"# profiled: {len(measured.profilers)} thread spans (sections and the threads they started); native "
            "threads not seen",
            f"# top {top} functions by own time (tottime); times are each thread's CPU time (time.thread_time), not "
            "wall: a wait (a lock, consume's poll) costs nothing, and the neighbours' load does not inflate it; "
            "cProfile's overhead inflates per-call Python costs",
            "",
        ]
        (out_dir / f"{name}.txt").write_text("\n".join(header) + _report(measured.profilers, top))
    return result


def _report(profilers: list[cProfile.Profile], top: int) -> str:
    text = io.StringIO()
    stats = pstats.Stats(profilers[0], stream=text)
    for other in profilers[1:]:
        stats.add(other)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    from services.core.paths import REPO_ROOT

    return text.getvalue().lstrip("\n").replace(str(REPO_ROOT) + os.sep, "")


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
