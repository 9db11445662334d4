"""Event ids in Nissa: an exact duplicate is stored once, the same id with other content is a conflict."""

from __future__ import annotations

import random
from datetime import UTC

import duckdb
import numpy as np
import pyarrow as pa

from services.nissa.event_ids import SeenKeys, event_keys, repeated
from services.oona.topic_registry import topic_spec
from tests.samples import health_signal
from tests.unit.nissa_fakes import CODEC, Message, commit_all, new_store

HEALTH = topic_spec("telemetry.seed.health")
DECISIONS = topic_spec("control.tamiyo.decisions")


def health(event_id: str, epoch: int = 0) -> bytes:
    return CODEC.encode(HEALTH, HEALTH.message_type(event_id=event_id, sender_id="t", topic=HEALTH.name,
                                                    run_id="run-1", payload=health_signal(epoch=epoch)))


def test_event_keys_are_stable_and_tell_strings_apart():
    ids = ["", "a", "b", "ab", "ba", "é", "6f1c9a52-3d0e-5b8e-9c43-2b7f0e8d4a11", "x" * 300]
    keys = event_keys(pa.array(ids))
    assert len(set(keys.tolist())) == len(ids)
    assert keys[1] == np.uint64(0xAF63DC4C8601EC8C)  # FNV-1a 64 of b"a": the keys must never change
    sliced = pa.array(["zz", *ids]).slice(1)
    assert event_keys(sliced).tolist() == keys.tolist()
    assert event_keys(pa.array(ids).cast(pa.string_view())).tolist() == keys.tolist()
    assert event_keys(pa.chunked_array([ids[:3], ids[3:]])).tolist() == keys.tolist()


def test_seen_keys_behave_as_a_set():
    rng = random.Random(7)
    seen, reference = SeenKeys(), set()
    for size in [1, 5, 1000, 3, 200, 200, 0, 4000]:
        keys = np.array([rng.getrandbits(64) for _ in range(size)], dtype=np.uint64)
        probe = np.array([rng.getrandbits(64) for _ in range(50)] + list(keys[:20]) + list(reference)[:20],
                         dtype=np.uint64)
        assert seen.contains(probe).tolist() == [int(k) in reference for k in probe]
        seen.add(keys)
        reference.update(int(k) for k in keys)
    assert len(seen) == sum([1, 5, 1000, 3, 200, 200, 0, 4000])
    assert repeated(np.array([3, 1, 3, 2, 1], dtype=np.uint64)).tolist() == [True, True, True, False, True]


def rows(db) -> tuple[list, list]:
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT event_id, kafka_offset, epoch FROM health_signal ORDER BY kafka_offset").fetchall()
        dead = con.execute("SELECT source_offset, error_type, reason FROM dead_letters ORDER BY source_offset"
                           ).fetchall()
    return stored, dead


def test_duplicates_are_skipped_and_conflicts_dead_lettered_within_a_batch_and_against_the_database(tmp_path):
    db = tmp_path / "nissa.duckdb"
    a, a_other = health("evt-a", epoch=1), health("evt-a", epoch=2)
    first = [Message(HEALTH.name, 0, 0, a), Message(HEALTH.name, 0, 1, a), Message(HEALTH.name, 0, 2, a_other),
             Message(HEALTH.name, 0, 3, health("evt-b"))]
    store = new_store(db)
    try:
        committer = commit_all([(first, {(HEALTH.name, 0): 4})], store)
    finally:
        store.close()
    stored, dead = rows(db)
    assert stored == [("evt-a", 0, 1), ("evt-b", 3, 0)]
    assert committer.admission.duplicates == 1
    assert [(o, t) for o, t, _ in dead] == [(2, "EventIdConflict")]
    assert "event id conflict: evt-a" in dead[0][2] and f"{HEALTH.name}[0] offset 0" in dead[0][2]

    # A restarted writer knows the stored ids (loaded from the tables), also on another partition.
    second = [Message(HEALTH.name, 1, 0, a), Message(HEALTH.name, 1, 1, health("evt-b", epoch=5)),
              Message(HEALTH.name, 1, 2, health("evt-c"))]
    store = new_store(db)
    try:
        commit_all([(second, {(HEALTH.name, 1): 3})], store)
    finally:
        store.close()
    stored, dead = rows(db)
    assert stored == [("evt-a", 0, 1), ("evt-c", 2, 0), ("evt-b", 3, 0)]
    assert [(o, t) for o, t, _ in dead] == [(1, "EventIdConflict"), (2, "EventIdConflict")]
    assert f"evt-b was first stored from {HEALTH.name}[0] offset 3" in dead[0][2]


def test_an_exact_duplicate_of_a_decision_with_maps_is_recognised(tmp_path):
    """Content is compared on the decoded row: lists, maps and nested records included."""
    from tests.samples import message_for

    db = tmp_path / "nissa.duckdb"
    decision = CODEC.encode(DECISIONS, message_for(DECISIONS, event_id="d-evt"))
    store = new_store(db)
    try:
        commit_all([([Message(DECISIONS.name, 0, 0, decision)], {}),
                    ([Message(DECISIONS.name, 0, 1, decision)], {})], store)
    finally:
        store.close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM adaptation_decision").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_a_re_emission_sent_again_with_another_timestamp_and_sender_is_a_duplicate(tmp_path):
    """The envelope says how an event was sent, not what it says: Tamiyo's ``content_digest`` rule."""
    from datetime import datetime, timedelta

    def sent(sender: str, at: datetime) -> bytes:
        return CODEC.encode(HEALTH, HEALTH.message_type(event_id="evt-r", sender_id=sender, topic=HEALTH.name,
                                                        run_id="run-1", trace_id=sender, timestamp=at,
                                                        payload=health_signal(epoch=3)))

    now = datetime.now(UTC)
    batch = [Message(HEALTH.name, 0, 0, sent("tolaria-1", now)),
             Message(HEALTH.name, 0, 1, sent("tolaria-2", now + timedelta(seconds=30)))]
    store = new_store(tmp_path / "nissa.duckdb")
    try:
        committer = commit_all([(batch, {(HEALTH.name, 0): 2})], store)
    finally:
        store.close()
    stored, dead = rows(tmp_path / "nissa.duckdb")
    assert stored == [("evt-r", 0, 3)] and dead == []
    assert committer.admission.duplicates == 1
