"""Event ids in Nissa: an exact duplicate is skipped, the same id with other content is a conflict.

The rule is the one every consumer applies (issue 11, "one definition of valid"): a
deterministic event id names one fact. Seen again with the same content (a producer retry, a
resumed run re-emitting), it is a duplicate and stored once; seen again with other content, it
is a conflict: dead-lettered with a reason that names where the id was first stored, never
stored beside the first. "Content" is the decoded event in today's columns, everything but
where it was read (``kafka_partition``, ``kafka_offset``) and how it was sent (the envelope's
sender, timestamp, trace and schema version): the same rule as Tamiyo's ``content_digest``,
so a re-emission with a new timestamp is a duplicate for every consumer.

Looking ids up must not slow down as the database grows, so the writer keeps in memory a
64-bit key per stored event id (FNV-1a of its UTF-8 bytes, 8 bytes an event) in a few sorted
runs (``SeenKeys``): a batch costs O(batch x log stored) array work. Only rows whose key was
seen before, or repeats inside the batch, are candidates; for those (rare) the stored rows are
fetched by event id and compared exactly, so a 64-bit key collision costs one query, never a
wrong verdict. The keys are loaded from the event tables when the writer starts (one scan of
their ``event_id`` columns) and added after each commit; the database holds no extra column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

KAFKA_COLUMNS = ("kafka_partition", "kafka_offset")
NOT_CONTENT = KAFKA_COLUMNS + ("sender_id", "timestamp", "trace_id", "schema_version")
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def event_keys(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of each string's UTF-8 bytes (vectorised over the batch; a null hashes as '')."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    n = len(array)
    keys = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return keys
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset: array.offset + n + 1]
    starts, lengths = offsets[:-1], np.diff(offsets)
    if data_buf is None or not lengths.any():
        return keys
    data = np.frombuffer(data_buf, dtype=np.uint8)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max())):
            active = lengths > j
            if active.all():
                keys = (keys ^ data[starts + j].astype(np.uint64)) * _FNV_PRIME
            else:
                rows = np.flatnonzero(active)
                keys[rows] = (keys[rows] ^ data[starts[rows] + j].astype(np.uint64)) * _FNV_PRIME
    return keys


class SeenKeys:
    """A growing set of uint64 keys as sorted runs (merged when a run is as long as the one before)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self._runs.append(np.sort(np.asarray(keys, dtype=np.uint64)))
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="mergesort")

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if not self._runs or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        # Probing in key order walks each run forwards: far fewer cache misses than random probes.
        order = np.argsort(keys)
        probe = keys[order]
        hits = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, probe), len(run) - 1)
            hits |= run[at] == probe
        found = np.empty(len(keys), dtype=bool)
        found[order] = hits
        return found


@dataclass
class IdVerdicts:
    """For one table's batch: which rows to store, and the conflicts (row, reason) to dead-letter."""

    keep: np.ndarray
    conflicts: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0


def repeated(keys: np.ndarray) -> np.ndarray:
    """True for every row whose key occurs more than once in ``keys``."""
    if len(keys) < 2:
        return np.zeros(len(keys), dtype=bool)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    mask_sorted = np.zeros(len(keys), dtype=bool)
    mask_sorted[1:] |= same
    mask_sorted[:-1] |= same
    mask = np.empty(len(keys), dtype=bool)
    mask[order] = mask_sorted
    return mask


def resolve_ids(batch: pa.Table, keys: np.ndarray, seen: SeenKeys, topic: str,
                stored: Callable[[list[str]], pa.Table]) -> IdVerdicts:
    """Duplicates and conflicts among ``batch`` rows and against what is stored (``stored(ids)`` fetches it)."""
    n = batch.num_rows
    in_store = seen.contains(keys)
    candidates = in_store | repeated(keys)
    verdicts = IdVerdicts(np.ones(n, dtype=bool))
    if not candidates.any():
        return verdicts
    rows = np.flatnonzero(candidates)
    content = [c for c in batch.column_names if c not in NOT_CONTENT]
    sub = batch.take(pa.array(rows)).to_pylist()
    holders: dict[str, list[tuple[int, int, tuple]]] = {}
    if in_store.any():
        for row in stored(sorted({sub[i]["event_id"] for i in np.flatnonzero(in_store[rows])})).to_pylist():
            holders.setdefault(row["event_id"], []).append(
                (row["kafka_partition"], row["kafka_offset"], tuple(row[c] for c in content)))
        for found in holders.values():
            found.sort(key=lambda h: (h[0], h[1]))
    for i in sorted(range(len(rows)), key=lambda i: (sub[i]["kafka_partition"], sub[i]["kafka_offset"])):
        row = sub[i]
        value = tuple(row[c] for c in content)
        first = holders.get(row["event_id"])
        if first is None:
            holders[row["event_id"]] = [(row["kafka_partition"], row["kafka_offset"], value)]
            continue
        verdicts.keep[rows[i]] = False
        if any(value == h[2] for h in first):
            verdicts.duplicates += 1
        else:
            partition, offset, _ = first[0]
            verdicts.conflicts.append((int(rows[i]), f"event id conflict: {row['event_id']} was first stored from "
                                                     f"{topic}[{partition}] offset {offset} with other content"))
    return verdicts
