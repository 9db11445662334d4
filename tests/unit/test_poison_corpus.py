"""The poison soak's corpus is what it claims (no broker): every topic covered, each bad record between
good ones on one partition, good records decode, and the byte-level poison is refused by the codec."""

from __future__ import annotations

import pytest

from services.blueprints.compiler import compile_blueprint
from services.core.errors import DecodeError
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import data_topics, topic_spec
from tests.e2e.poison_corpus import NISSA, SERVICE_GROUPS, CorpusBuilder
from tests.samples import blueprint

BYTE_LEVEL = ("truncated body", "random bytes", "random bytes behind a valid header", "tombstone",
              "unknown fingerprint", "first string length 2^63-1", "10-byte varint above 2^64 as the timestamp")


@pytest.fixture(scope="module")
def corpus():
    builder = CorpusBuilder("unit0000", compile_blueprint(blueprint())[0])
    return builder.build() + builder.empty_target_layers_run()


def test_every_topic_has_poison_between_good_events(corpus):
    # Every topic of events and the DLQ; the schema log is the bus's own (its bad records are refused by
    # every reader with a warning: tests/unit/test_schema_log.py).
    assert {r.topic for r in corpus} == {spec.name for spec in data_topics()}
    for topic in {r.topic for r in corpus} - {"esper.dlq"}:
        mine = [r for r in corpus if r.topic == topic and "target_layers" not in r.label]  # that run is apart
        assert len({r.key for r in mine}) == 1, f"{topic}: records on more than one partition"
        for before, record, after in zip(mine, mine[1:], mine[2:], strict=False):
            if not record.good:
                assert before.good and after.good, f"{topic}: {record.label} is not between good events"


def test_good_records_decode_and_byte_level_poison_is_refused(corpus):
    codec = SingleObjectCodec()
    for record in corpus:
        spec = topic_spec(record.topic)
        if spec.raw:
            continue
        if record.good:
            assert codec.decode(spec, record.value).event_id == record.event_id
        elif record.label in BYTE_LEVEL:
            with pytest.raises(DecodeError):
                codec.decode(spec, record.value)


def test_each_bad_record_names_nissa_and_every_service_reading_its_topic(corpus):
    for record in corpus:
        if record.good or record.topic == "esper.dlq":
            continue
        assert NISSA in record.groups
        if record.label in BYTE_LEVEL:
            assert set(record.groups) == {NISSA, *SERVICE_GROUPS.get(record.topic, ())}
