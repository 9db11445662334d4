"""What of a decoded batch enters the database: the contracts' checks, then the event-id verdicts.

``Batch.decode`` turns messages into Arrow tables (values that do not decode are already
``dead_letters`` rows). ``Admission.write`` then, per table:

1. applies the contract (``validity.py``: vectorised checks derived from the pydantic
   models; per event for a model with validators only pydantic can run), so that Nissa
   stores exactly what a service would accept; a rejected row becomes a ``dead_letters``
   row (origin ``nissa``, error type ``ContractViolationError``, the reason naming the field);
2. resolves event ids (``event_ids.py``): an exact duplicate of a stored or earlier row is
   skipped, the same id with other content is dead-lettered as an ``EventIdConflict``;
3. writes what is left, the dead letters and the offsets in one transaction
   (``NissaStore.write``), and only then remembers the new event ids.

Rows know their Kafka coordinates (``kafka_partition``, ``kafka_offset``); the messages of
the batch give a dead letter its key and original bytes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from services.core.errors import DecodeError
from services.nissa.event_ids import SeenKeys, event_keys, resolve_ids
from services.nissa.store import NissaStore
from services.nissa.tables import arrow_batch, dead_letters_table
from services.nissa.validity import TableChecks, checks_for
from services.oona.avro import SINGLE_OBJECT_MAGIC
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

CONSUMER_GROUP = "nissa"


class Messages:
    """The messages of one taken batch, found by (topic, partition, offset) once needed."""

    def __init__(self, pending: Mapping[str, list]) -> None:
        self._pending = pending
        self._index: dict[tuple[str, int, int], Any] | None = None

    def get(self, topic: str, partition: int, offset: int) -> Any:
        if self._index is None:
            self._index = {(t, m.partition(), m.offset()): m for t, ms in self._pending.items() for m in ms}
        return self._index[(topic, partition, offset)]


def dead_letter_row(message: Any, reason: str, error_type: str) -> tuple:
    """A ``dead_letters`` row (origin ``nissa``) for a message the sink refuses to store."""
    values = {
        "source_topic": message.topic(), "source_partition": message.partition(), "source_offset": message.offset(),
        "reason": reason[:4000], "error_type": error_type[:100], "consumer_group": CONSUMER_GROUP,
        "original_key": message.key(), "original_value": message.value(), "failed_at": datetime.now(UTC),
        "origin": "nissa", "kafka_partition": message.partition(), "kafka_offset": message.offset(),
    }
    return tuple(values[c.name] for c in dead_letters_table().columns)


class Contracts:
    """The contracts of the tables ``routes`` (topic -> (spec, table), as ``Batch`` holds them) route to.

    ``rejections`` is the one verdict the sink, the archive and a replay give a decoded row: vectorised
    checks (``validity.py``), and the contract itself per event where only pydantic can decide.
    """

    def __init__(self, routes: Mapping[str, tuple[TopicSpec, Any]], codec: SingleObjectCodec | None = None) -> None:
        self.checks: dict[str, TableChecks] = {}
        self.topics: dict[str, str] = {}
        self.specs: dict[str, TopicSpec] = {}
        for topic, (spec, table) in routes.items():
            if spec.raw:
                continue
            self.checks[table.name] = checks_for(table, spec.message_type)
            self.topics[table.name] = topic
            self.specs[table.name] = spec
        self._codec = codec

    def rejections(self, name: str, part: pa.Table, message_at: Callable[[int, int], Any]) -> dict[int, str]:
        """The rows of ``part`` (decoded rows of table ``name``) that the contract rejects, with the reason;
        ``message_at(partition, offset)`` gives a row's message (for the checks only pydantic can run)."""
        checks = self.checks.get(name)
        if checks is None:
            return {}
        rejected = {r.row: r.reason for r in checks.rejections(part)}
        if checks.exact:
            for row in range(part.num_rows):
                if row not in rejected:
                    reason = self._exact(checks, message_at(*_place(part, row)))
                    if reason is not None:
                        rejected[row] = reason
        return rejected

    def _exact(self, checks: TableChecks, message: Any) -> str | None:
        """The contract's own verdict on one event (models with validators only pydantic can run)."""
        value = message.value()
        if value is None or value[:2] != SINGLE_OBJECT_MAGIC:
            return None  # Confluent-framed: Batch validated it with the contract already
        if self._codec is None:
            self._codec = SingleObjectCodec()
        try:
            self._codec.decode(self.specs[checks.table], value)
        except DecodeError as exc:
            return str(exc)
        return None


class Admission:
    """Screens decoded batches against the contracts and the stored event ids, then writes them.

    ``routes`` maps topic names to (spec, table) as ``Batch`` holds them. The stored event ids
    are loaded by ``load`` (the sink calls it while starting), else by the first write that needs them.
    """

    def __init__(self, routes: Mapping[str, tuple[TopicSpec, Any]], store: NissaStore,
                 codec: SingleObjectCodec | None = None) -> None:
        self.store = store
        self.contracts = Contracts(routes, codec)
        self.seen: SeenKeys | None = None
        self.duplicates = 0

    def load(self) -> SeenKeys:
        """Read every stored event id (one scan of the tables' ``event_id`` columns), unless done already."""
        if self.seen is not None:
            return self.seen
        seen = SeenKeys()
        for table in self.contracts.checks:
            for chunk in self.store.event_ids(table):
                seen.add(event_keys(chunk))
        log.info("nissa event ids loaded count=%d", len(seen))
        self.seen = seen
        return seen

    def forget(self) -> None:
        """Drop the event ids held in memory (rows were stored besides ``write``); the next write that needs
        them loads them again."""
        self.seen = None

    def write(self, pending: Mapping[str, list], decoded: Mapping[str, list[pa.Table]],
              offsets: Mapping[tuple[str, int], int]) -> int:
        """Screen ``decoded`` (rows of ``pending``), write it with ``offsets``; returns the rows written."""
        messages = Messages(pending)
        out: dict[str, list[pa.Table]] = {}
        dead: list[tuple] = []
        new_keys: list[np.ndarray] = []
        for name, parts in decoded.items():
            if name not in self.contracts.checks:  # dead_letters, or a table this admission has no contract for
                out[name] = list(parts)
                continue
            topic = self.contracts.topics[name]
            valid = [self._valid(name, topic, part, messages, dead) for part in parts]
            valid = [part for part in valid if part.num_rows]
            if not valid:
                continue
            seen = self.load()
            merged = _concat(valid)
            keys = event_keys(merged.column("event_id"))
            verdicts = resolve_ids(merged, keys, seen, topic, functools.partial(self.store.stored_events, name))
            for row, reason in verdicts.conflicts:
                dead.append(dead_letter_row(messages.get(topic, *_place(merged, row)), reason, "EventIdConflict"))
            self.duplicates += verdicts.duplicates
            if verdicts.duplicates:
                log.info("nissa skipped exact duplicates topic=%s count=%d", topic, verdicts.duplicates)
            if not verdicts.keep.all():
                merged, keys = merged.filter(pa.array(verdicts.keep)), keys[verdicts.keep]
            out[name] = [merged]
            new_keys.append(keys)
        if dead:
            out.setdefault(dead_letters_table().name, []).append(arrow_batch(dead_letters_table(), dead))
        written = self.store.write(out, offsets)
        if self.seen is not None:
            for keys in new_keys:
                self.seen.add(keys)
        return written

    def _valid(self, name: str, topic: str, part: pa.Table, messages: Messages, dead: list[tuple]) -> pa.Table:
        rejected = self.contracts.rejections(name, part, functools.partial(messages.get, topic))
        if not rejected:
            return part
        for row, reason in sorted(rejected.items()):
            dead.append(dead_letter_row(messages.get(topic, *_place(part, row)), reason, "ContractViolationError"))
        keep = np.ones(part.num_rows, dtype=bool)
        keep[list(rejected)] = False
        return part.filter(pa.array(keep))


def _concat(parts: list[pa.Table]) -> pa.Table:
    if len(parts) == 1:
        return parts[0]
    try:
        return pa.concat_tables(parts)
    except pa.ArrowInvalid:  # the same columns in two layouts (e.g. string and string_view)
        return pa.concat_tables(parts, promote_options="permissive")


def _place(table: pa.Table, row: int) -> tuple[int, int]:
    return table.column("kafka_partition")[row].as_py(), table.column("kafka_offset")[row].as_py()
