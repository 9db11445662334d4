"""Urza's catalogue as of positions: the fold that a replay, a fork and a restarted Tamiyo decide with.

The catalogue grows: kernel K1 of a blueprint, then a faster K2 of the same blueprint. As of the positions before
K2, only K1 is chosen; as of the end, K2. A follower that read the four topics interleaved in any order holds the
catalogue the as-of fold gives for its positions; a history moved forward position by position holds the one a
fold from scratch gives; a record compacted away under a position does not change what is chosen.
"""

from __future__ import annotations

import random
import zlib

import pytest

from contracts import (
    BlueprintSubmitted,
    CatalogPosition,
    CompilationOutcome,
    KernelCharacterized,
    KernelReady,
)
from services.blueprints.compiler import compile_blueprint
from services.karn.starter_library import for_slot
from services.tamiyo.service import CatalogChooser
from services.urza.catalog import Catalog
from services.urza.catalog_as_of import CatalogHistory, CatalogRecord, catalog_as_of

SUBMITTED, READY, CHARACTERIZED, LIBRARY = ("compilation.blueprint.submitted", "compilation.kernel.ready",
                                           "validation.kernel.characterized", "library.kernels")
PARTITIONS = {SUBMITTED: 3, READY: 3, CHARACTERIZED: 3, LIBRARY: 1}


class Log:
    """Catalogue topics as a log: appending gives each record its partition (by key) and offset."""

    def __init__(self) -> None:
        self.records: list[CatalogRecord] = []
        self.ends = {(t, p): 0 for t, n in PARTITIONS.items() for p in range(n)}

    def append(self, topic: str, key: str, payload) -> None:
        partition = zlib.crc32(key.encode()) % PARTITIONS[topic]
        offset = self.ends[(topic, partition)]
        self.records.append(CatalogRecord(topic, partition, offset, payload))
        self.ends[(topic, partition)] = offset + 1

    def positions(self) -> list[CatalogPosition]:
        return [CatalogPosition(topic=t, partition=p, offset=o) for (t, p), o in sorted(self.ends.items())]

    def publish(self, blueprint, init_seed: int, latency_ms: float, *, submit: bool = True) -> str:
        kernel, _ = compile_blueprint(blueprint, init_seed=init_seed)
        if submit:
            self.append(SUBMITTED, blueprint.blueprint_id,
                        BlueprintSubmitted(blueprint_id=blueprint.blueprint_id, submitted_by="t", blueprint=blueprint))
        self.append(LIBRARY, kernel.kernel_id, kernel)
        bp_id = blueprint.blueprint_id
        ready = KernelReady(blueprint_id=bp_id, outcome=CompilationOutcome.READY, kernel=kernel.metadata)
        self.append(READY, blueprint.blueprint_id, ready)
        self.append(CHARACTERIZED, kernel.kernel_id, KernelCharacterized(
            kernel_id=kernel.kernel_id, blueprint_id=blueprint.blueprint_id, device="cpu", latency_ms_p50=latency_ms,
            latency_ms_p95=latency_ms, peak_memory_mb=0.1, passed=True))
        return kernel.kernel_id


def chosen(catalog: Catalog) -> list[str]:
    """What Tamiyo's chooser offers for the 2 -> 8 slot, best first."""
    return [c.kernel_id for c in CatalogChooser(catalog).candidates([2], [8])]


def state(catalog: Catalog) -> tuple:
    """Everything a decision reads of a catalogue, and its positions."""
    kernels = {k: (e.metadata, e.status, e.characterization) for k, e in catalog.kernels.items()}
    return kernels, sorted(catalog.blueprints), catalog.position_list()


@pytest.fixture(scope="module")
def growing():
    """(log, positions before K2, K1, K2): K2 is K1's blueprint again, faster, published later."""
    mlp = next(bp for bp in for_slot([2], [8]) if len(bp.architecture.layers) == 3)
    log = Log()
    k1 = log.publish(mlp, init_seed=0, latency_ms=1.0)
    before = log.positions()
    k2 = log.publish(mlp, init_seed=1, latency_ms=0.1, submit=False)
    return log, before, k1, k2


def test_the_catalogue_as_of_positions_holds_what_was_below_them_and_names_them(growing):
    log, before, k1, k2 = growing
    assert k1 != k2
    early, late = catalog_as_of(log.records, before), catalog_as_of(log.records, log.positions())
    assert chosen(early) == [k1]
    assert chosen(late) == [k2, k1]  # the faster one first: a later decision picks it
    assert early.position_list() == before and late.position_list() == log.positions()
    # A partition not named: none of its records; no positions at all: an empty catalogue.
    no_characterisations = [p for p in log.positions() if p.topic != CHARACTERIZED]
    assert chosen(catalog_as_of(log.records, no_characterisations)) == []
    assert catalog_as_of(log.records, []).kernels == {}


@pytest.mark.parametrize("seed", range(8))
def test_a_follower_reading_the_topics_in_any_interleaving_holds_the_as_of_catalogue(growing, seed):
    """Each partition in its order, the partitions interleaved at random (a characterisation may come first)."""
    log, _, _, _ = growing
    rng = random.Random(seed)
    queues: dict[tuple[str, int], list[CatalogRecord]] = {}
    for r in log.records:
        queues.setdefault((r.topic, r.partition), []).append(r)
    follower = Catalog()
    for topic, partition in log.ends:
        follower.follow(topic, partition)
    while any(queues.values()):
        queue = rng.choice([q for q in queues.values() if q])
        r = queue.pop(0)
        follower.apply_at(r.topic, r.partition, r.offset, r.payload)
        if rng.random() < 0.3:  # a decision here: the follower's positions give back its very catalogue
            assert state(catalog_as_of(log.records, follower.position_list())) == state(follower)
    assert state(follower) == state(catalog_as_of(log.records, log.positions()))


def test_a_history_moved_forward_or_back_equals_a_fold_from_scratch(growing):
    log, before, _, _ = growing
    history = CatalogHistory(reversed(log.records))  # the order given does not matter: offsets do
    steps = [before, log.positions(), before, [], log.positions()]
    for positions in steps:
        assert state(history.at(positions)) == state(catalog_as_of(log.records, positions))
    # The whole catalogue (decisions recorded before v3): the same kernels (it names only partitions it read).
    assert state(history.whole())[:2] == state(catalog_as_of(log.records, log.positions()))[:2]


def test_a_record_compacted_away_under_a_position_changes_nothing_chosen(growing):
    """library.kernels is compacted: K1's entry republished after the position removes the one below it.
    KernelReady (not compacted) still names K1, so the catalogue as of the position offers the same kernels."""
    log, before, k1, _ = growing
    compacted = [r for r in log.records if not (r.topic == LIBRARY and getattr(r.payload, "kernel_id", "") == k1)]
    assert chosen(catalog_as_of(compacted, before)) == chosen(catalog_as_of(log.records, before)) == [k1]
    # ...and the catalogue is still named by the positions asked for, so a replayed decision records the same.
    assert catalog_as_of(compacted, before).position_list() == before


def test_a_record_that_is_no_event_still_moves_the_position():
    catalog = Catalog()
    catalog.follow(LIBRARY, 0)
    assert catalog.position_list() == [CatalogPosition(topic=LIBRARY, partition=0, offset=0)]
    catalog.apply_at(LIBRARY, 0, 4, None)  # a tombstone or undecodable bytes at offset 4
    assert catalog.position_list() == [CatalogPosition(topic=LIBRARY, partition=0, offset=5)]
    assert catalog.kernels == {}
