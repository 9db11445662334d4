"""Urza's catalogue as of positions: the catalogue a decision was made with, rebuilt from the log.

Tamiyo records with every decision how far it had folded each partition of the four catalogue topics
(``AdaptationDecision.catalog_positions``: the next offset to read, per partition). The catalogue as of those
positions folds every record below them and nothing at or after them. What a decision reads of a catalogue
depends only on which records of each partition were folded, in their order (``Catalog``), so this is the
catalogue the live Tamiyo decided with, however the topics' records were interleaved when it read them.

- ``catalog_as_of(records, positions)``: one catalogue, of its own.
- ``CatalogHistory``: many in a row (a replay's epochs, whose positions only grow): from one position to the
  next it folds only the records between them.
- ``load_catalog_as_of(settings, codec, positions)``, ``load_catalog_history(settings, codec)``: the same
  from the broker (a fork, a tool, a test).

Compaction: only ``library.kernels`` is compacted (key = kernel id; the other three topics are only ever
appended to). Its records are content-addressed (the id is the checksum of the weights), so a key's record says
the same whatever its offset, and compaction only removes a record when a later one of the same key exists.
Offsets survive compaction, so "below P" still means the records Tamiyo had read, less any whose kernel was
published again at or after P. Such a kernel is still known as of P from ``compilation.kernel.ready`` (not
compacted, same metadata), so decisions are unchanged; a kernel put on the library alone (no KernelReady) and
republished after P would be missing as of P: that is the limit. Retention that deletes the other topics'
records (a cluster's default, not the local broker's) loses the catalogue itself: archive first (``esper
archive``; a replay from the archive has every record's offset).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING

from contracts import CatalogPosition
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import Codec
from services.oona.log_reader import read_range
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.urza.catalog import CATALOG_TOPICS, Catalog
from services.urza.topic_view import decode_or_skip

_ORDER = {t.value: i for i, t in enumerate(CATALOG_TOPICS)}


class CatalogRecord(NamedTuple):
    """One record of a catalogue topic (registry name, no prefix); ``payload`` None: no event (it still
    counts for the position)."""

    topic: str
    partition: int
    offset: int
    payload: Any


Positions = Iterable[CatalogPosition]


def _as_dict(positions: Positions) -> dict[tuple[str, int], int]:
    return {(p.topic, p.partition): p.offset for p in positions}


class CatalogHistory:
    """The catalogue topics' records with their positions; catalogues as of positions."""

    def __init__(self, records: Iterable[CatalogRecord]) -> None:
        by_partition: dict[tuple[str, int], list[tuple[int, Any]]] = {}
        for r in records:
            if r.topic in _ORDER:
                by_partition.setdefault((r.topic, r.partition), []).append((r.offset, r.payload))
        # In the follower's order: topic by topic, partition by partition, each in offset order.
        self._partitions = sorted(by_partition, key=lambda k: (_ORDER[k[0]], k[1]))
        self._offsets: dict[tuple[str, int], list[int]] = {}
        self._payloads: dict[tuple[str, int], list[Any]] = {}
        for key in self._partitions:
            ordered = sorted(by_partition[key], key=lambda item: item[0])
            self._offsets[key] = [o for o, _ in ordered]
            self._payloads[key] = [p for _, p in ordered]
        self._catalog: Catalog | None = None
        self._at: dict[tuple[str, int], int] = {}

    def whole(self) -> Catalog:
        """The catalogue with every record (as of the end of what was read)."""
        return self._fold(Catalog(), {}, {k: self._offsets[k][-1] + 1 for k in self._partitions})

    def at(self, positions: Positions) -> Catalog:
        """The catalogue as of ``positions`` (a partition not named: none of its records).

        Valid until the next call (it moves forward in place when the new positions are at or after the last
        ones); ``catalog_as_of`` gives one of its own.
        """
        wanted = _as_dict(positions)
        last = self._at
        if self._catalog is None or any(wanted.get(k, 0) < o for k, o in last.items()):
            self._catalog, last = Catalog(), {}
        self._catalog = self._fold(self._catalog, last, wanted)
        self._at = wanted
        return self._catalog

    def _fold(self, catalog: Catalog, start: dict[tuple[str, int], int], end: dict[tuple[str, int], int]) -> Catalog:
        """Fold the records of each partition from ``start`` to ``end`` (offsets) into ``catalog``."""
        for key in self._partitions:
            offsets, payloads = self._offsets[key], self._payloads[key]
            lo, hi = bisect.bisect_left(offsets, start.get(key, 0)), bisect.bisect_left(offsets, end.get(key, 0))
            for i in range(lo, hi):
                catalog.apply_at(key[0], key[1], offsets[i], payloads[i])
        # Named exactly as asked (a record below a position may have been compacted away): a decision made
        # with this catalogue records the same positions.
        catalog.name_positions(end)
        return catalog


def catalog_as_of(records: Iterable[CatalogRecord], positions: Positions) -> Catalog:
    """Urza's catalogue as of ``positions``: every record below them folded, in the follower's order."""
    return CatalogHistory(records).at(positions)


def read_catalog_records(settings: KafkaSettings, codec: Codec) -> list[CatalogRecord]:
    """Every committed record of the catalogue topics, with its position (undecodable ones as None)."""
    admin = clients.admin(settings)
    specs = {topic_spec(t.value, settings.topic_prefix).name: topic_spec(t.value, settings.topic_prefix)
             for t in CATALOG_TOPICS}
    ends = end_offsets(admin, partitions_of(admin, list(specs)))
    records = []
    for msg in read_range(settings, {key: (OFFSET_BEGINNING, end) for key, end in ends.items() if end > 0}):
        spec = specs[msg.topic() or ""]
        message = decode_or_skip(codec, spec, msg) if msg.value() is not None else None
        records.append(CatalogRecord(spec.name[len(settings.topic_prefix):], msg.partition() or 0,
                                     msg.offset() or 0, message.payload if message is not None else None))
    return records


def load_catalog_history(settings: KafkaSettings, codec: Codec) -> CatalogHistory:
    """The catalogue topics' history from the broker (catalogues as of any positions, e.g. a recorded run's)."""
    return CatalogHistory(read_catalog_records(settings, codec))


def load_catalog_as_of(settings: KafkaSettings, codec: Codec, positions: Positions) -> Catalog:
    """Urza's catalogue as of ``positions``, read from the broker (e.g. a decision's ``catalog_positions``)."""
    return catalog_as_of(read_catalog_records(settings, codec), positions)
