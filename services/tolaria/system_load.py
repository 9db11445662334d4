"""The machine's load and memory use, as fractions in [0, 1], for ``SystemStatePacket``."""

from __future__ import annotations

import os
from pathlib import Path


def system_load(meminfo: Path = Path("/proc/meminfo")) -> tuple[float, float]:
    """(1-minute load average per CPU, fraction of memory in use); 0.0 for what the system does not tell."""
    try:
        load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        load = 0.0
    memory = 0.0
    try:
        info = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        total = float(info["MemTotal"].split()[0])
        available = float(info["MemAvailable"].split()[0])
        memory = 1.0 - available / total
    except (OSError, KeyError, ValueError):
        pass
    return min(1.0, max(0.0, load)), min(1.0, max(0.0, memory))
