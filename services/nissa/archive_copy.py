"""Replay from the archive as DuckDB's own work: one topic's archived rows copied into their table by SQL.

A replay from the archive stores what the sink would have stored. The archive was written by Nissa
from the rows it decoded, with the contract's verdict on each (``archive.VERDICT``), so what is left
to decide at replay time is what a copy cannot know by itself, and it is decided in SQL, never per
row in Python:

* the files are archive files of the table (``archive.check_files``: raw columns, types; a foreign or
  corrupt file is one line, ``ArchiveError``), checked when the replay selects them;
* rows the contract rejected when archived become ``dead_letters`` rows (``ContractViolationError``,
  with their exact bytes), as the sink would have made them; the verdict is taken as archived, as the
  typed columns are (decoded when archived, with the schema log): the archive is Nissa's own record;
* event ids: rows whose id (its DuckDB ``hash``) occurs twice among the rows, or is stored already,
  are the only candidates; they (rare) are fetched and judged by ``event_ids.resolve_ids``, the rule
  of every consumer (an exact duplicate is skipped, other content under a seen id is an
  ``EventIdConflict`` dead letter), and left out of the copy by an anti-join;
* everything else goes ``INSERT INTO table SELECT ... FROM read_parquet(...)`` in one transaction
  with those dead letters.

Files without the verdict (written before it was archived) are replayed through the Python path
(``Selection.items``: the contract's vectorised checks on Arrow), as before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from services.nissa.admission import Admission, dead_letter_row
from services.nissa.archive import RAW_COLUMNS, RAW_FIELDS, VERDICT, Source, archived_messages
from services.nissa.errors import ArchiveError
from services.nissa.event_ids import SeenKeys, event_keys, resolve_ids
from services.nissa.store import NissaStore
from services.nissa.tables import arrow_batch, dead_letters_table

ORDER = "ORDER BY kafka_partition, kafka_offset"
EXCLUDED = "_nissa_excluded"
CANDIDATES = "_nissa_candidates"


@dataclass
class Copied:
    """What one copy read: ``rows`` archived decoded, of which ``stored`` went to the table."""

    rows: int
    stored: int
    dead_letters: int
    duplicates: int
    kept: list[tuple[int, int, bytes]]  # (partition, offset, value) of every row, when asked to keep them


def copy_archived(store: NissaStore, admission: Admission, src: Source, keep: bool = False) -> Copied:
    """Copy ``src``'s decoded rows into its table (``src.verdicts`` must hold); see the module's doc."""
    assert src.verdicts, "rows archived without the contract's verdict go through the Python path"
    try:
        return _copy(store, admission, src, keep)
    except duckdb.Error as exc:
        raise ArchiveError(f"unreadable archive ({src.spec.name}): {str(exc).splitlines()[0]}") from None


def _copy(store: NissaStore, admission: Admission, src: Source, keep: bool) -> Copied:
    con = store.connection()
    table, topic = src.table, src.spec.name
    decoded = f"FROM {src.source} WHERE {src.where} AND decoded"
    ok = f"{decoded} AND {VERDICT} IS NULL"
    raw = ", ".join(RAW_COLUMNS)
    rows = con.execute(f"SELECT count(*) {decoded}").fetchall()[0][0]
    dead: list[tuple] = []
    rejected = con.sql(f"SELECT {raw}, {VERDICT} {decoded} AND {VERDICT} IS NOT NULL {ORDER}").to_arrow_table()
    if rejected.num_rows:
        messages = archived_messages(topic, _raw(rejected))
        dead += [dead_letter_row(m, reason, "ContractViolationError")
                 for m, reason in zip(messages, rejected.column(VERDICT).to_pylist(), strict=True)]
    # Candidates for the event-id rule: an id (its hash) twice among the rows, or stored already. One pass
    # over the event_id column; the rows themselves are read only when there are any (rare).
    query = f"SELECT hash(event_id) {ok} GROUP BY 1 HAVING count(*) > 1"
    if con.execute(f'SELECT count(*) FROM "{table.name}"').fetchall()[0][0]:
        query += f' UNION SELECT hash(event_id) {ok} AND hash(event_id) IN (SELECT hash(event_id) FROM "{table.name}")'
    twice = [h for (h,) in con.execute(query).fetchall()]
    candidates = pa.table({})
    if twice:
        con.register(CANDIDATES, pa.table({"h": pa.array(twice, pa.uint64())}))
        try:
            extra = ", ".join(c for c in RAW_COLUMNS if c not in ("kafka_partition", "kafka_offset"))
            candidates = con.sql(f"SELECT {src.columns}, {extra} {ok} AND hash(event_id) IN "
                                 f"(SELECT h FROM {CANDIDATES}) {ORDER}").to_arrow_table()
        finally:
            con.unregister(CANDIDATES)
    excluded, duplicates = _excluded(store, src, candidates, dead)
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    query = f"SELECT {columns} FROM (SELECT {src.columns} {ok})"
    if excluded.num_rows:
        con.register(EXCLUDED, excluded)
        query += (f" AS r WHERE NOT EXISTS (SELECT 1 FROM {EXCLUDED} AS x "
                  "WHERE x.kafka_partition = r.kafka_partition AND x.kafka_offset = r.kafka_offset)")
    try:
        letters = {dead_letters_table().name: [arrow_batch(dead_letters_table(), dead)]} if dead else {}
        written = store.write(letters, {}, {table.name: query})
    finally:
        if excluded.num_rows:
            con.unregister(EXCLUDED)
    admission.forget()  # rows were stored besides its ids in memory
    admission.duplicates += duplicates
    kept: list[tuple[int, int, bytes]] = []
    if keep:
        values = con.sql(f"SELECT kafka_partition, kafka_offset, kafka_value {decoded} {ORDER}").to_arrow_table()
        kept = list(zip(*(values.column(i).to_pylist() for i in range(3)), strict=True))
    return Copied(rows, written - len(dead), len(dead), duplicates, kept)


def _excluded(store: NissaStore, src: Source, candidates: pa.Table,
              dead: list[tuple]) -> tuple[pa.Table, int]:
    """The (partition, offset) of the candidates the event-id rule keeps out, and how many were exact
    duplicates; conflicts are added to ``dead``."""
    places = pa.schema([RAW_FIELDS[0], RAW_FIELDS[1]])
    if not candidates.num_rows:
        return places.empty_table(), 0
    table, topic = src.table, src.spec.name
    typed = candidates.select(table.column_names).cast(table.arrow_schema)
    keys = event_keys(typed.column("event_id"))
    seen = SeenKeys()
    ids = sorted(set(typed.column("event_id").to_pylist()))
    seen.add(event_keys(store.stored_events(table.name, ids).column("event_id")))
    verdicts = resolve_ids(typed, keys, seen, topic, functools.partial(store.stored_events, table.name))
    if verdicts.conflicts:
        messages = archived_messages(topic, _raw(candidates))
        dead += [dead_letter_row(messages[row], reason, "EventIdConflict") for row, reason in verdicts.conflicts]
    drop = np.flatnonzero(~verdicts.keep)
    return typed.select(["kafka_partition", "kafka_offset"]).take(pa.array(drop)).cast(places), verdicts.duplicates


def _raw(rows: pa.Table) -> pa.Table:
    return rows.select(RAW_COLUMNS).cast(pa.schema(RAW_FIELDS))
