"""Small stand-ins for Nissa's unit tests: a Kafka message, the sink's routes, a committer run to the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.nissa.batch import Batch, Decoders
from services.nissa.sink import Committer, sink_tables
from services.nissa.store import NissaStore
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import all_topics

CODEC = SingleObjectCodec()
TABLES = sink_tables(CODEC.store)
BY_RECORD = {t.record_name: t for t in TABLES}
TABLE_OF_TOPIC = {spec.name: BY_RECORD["DeadLetter" if spec.raw else spec.record_name].name for spec in all_topics()}


@dataclass
class Message:
    """What the sink reads of a confluent-kafka Message."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = b"k"
    _headers: list | None = None

    def topic(self): return self._topic
    def partition(self): return self._partition
    def offset(self): return self._offset
    def value(self): return self._value
    def key(self): return self._key
    def headers(self): return self._headers


def routes() -> dict:
    return {spec.name: (spec, BY_RECORD["DeadLetter"] if spec.raw else BY_RECORD[spec.record_name])
            for spec in all_topics()}


def new_batch(cls: type[Batch] = Batch) -> Batch:
    return cls(routes(), Decoders(CODEC.store))


def new_store(path: Path) -> NissaStore:
    store = NissaStore(path, TABLES)
    store.create_schema()
    return store


def commit_all(batches: list[tuple[list[Message], dict]], store: NissaStore, batch: Batch | None = None) -> Committer:
    """Each (messages, offsets) as one committed item, as the sink does; returns the committer (stopped)."""
    batch = batch or new_batch()
    committer = Committer(batch, store, None)
    try:
        for messages, offsets in batches:
            batch.add(messages)
            committer.submit((batch.take(), offsets))
        committer.wait()
    finally:
        committer.stop()
    return committer
