"""Nissa's SQL over decisions of both schema versions: v1 (the action in ``metadata``) and v2 (typed columns)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from contracts import AdaptationDecision, AdaptationType, CommandAction, TopicName
from services.nissa.archive import archive_connection, archive_table, write_archive_files
from services.nissa.counterfactual import write_counterfactual
from services.nissa.report_data import load_run
from services.nissa.store import NissaStore, table_columns
from services.nissa.tables import Table, columns_of, table_for
from services.oona.topic_registry import topic_spec
from tests.legacy_decisions import TYPED, v1_decision_bytes, v1_schema
from tests.samples import message_for
from tests.unit.nissa_fakes import CODEC, TABLES, new_batch
from tests.unit.nissa_fakes import Message as FakeMessage

DECISIONS = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value)
EPOCHS = topic_spec(TopicName.SYSTEM_EVENTS_EPOCH.value)
RUN = "run-old"


def decision_messages() -> list[FakeMessage]:
    """One run's decisions: two v1 (a germination, a no-op), two v2 (an advance, a no-op), in that order."""
    v1 = [v1_decision_bytes(DECISIONS, decision_id="d-0", epoch=0, run_id=RUN,
                            metadata={"command_id": "c-0", "action": "germinate", "family": "mlp"}),
          v1_decision_bytes(DECISIONS, decision_id="d-1", epoch=1, run_id=RUN, adaptation_type=AdaptationType.NO_OP,
                            layer_id=None, seed_idx=None, kernel_id=None,
                            metadata={"command_id": "", "action": "", "family": ""})]
    v2 = [AdaptationDecision(decision_id="d-2", layer_name="body.0", adaptation_type=AdaptationType.MODIFY_ARCHITECTURE,
                             confidence=1.0, urgency=1.0, epoch=2, layer_id=7, seed_idx=0, command_id="c-2",
                             action=CommandAction.ADVANCE, policy_version="v-new"),
          AdaptationDecision(decision_id="d-3", layer_name="-", adaptation_type=AdaptationType.NO_OP, confidence=0.5,
                             urgency=0.0, epoch=3, policy_version="v-new")]
    values = v1 + [CODEC.encode(DECISIONS, DECISIONS.message_type(event_id=f"ev-{d.decision_id}", sender_id="tamiyo",
                                                                   topic=DECISIONS.name, run_id=RUN, payload=d))
                   for d in v2]
    return [FakeMessage(DECISIONS.name, 0, i, value, RUN.encode()) for i, value in enumerate(values)]


def stored(path, tables=TABLES) -> NissaStore:
    store = NissaStore(path, tables)
    store.create_schema()
    batch = new_batch()
    batch.add(
        decision_messages() + [FakeMessage(EPOCHS.name, 0, 0, CODEC.encode(EPOCHS, message_for(EPOCHS, run_id=RUN)))]
    )
    store.write(batch.drain(), {})
    store.close()
    return store


EXPECTED_ACTIONS = [("d-0", "germinate"), ("d-1", None), ("d-2", "advance"), ("d-3", None)]


def test_the_typed_columns_hold_v2_and_the_views_read_v1_from_metadata(tmp_path):
    stored(tmp_path / "nissa.duckdb")
    con = duckdb.connect(str(tmp_path / "nissa.duckdb"), read_only=True)
    typed = con.execute("SELECT decision_id, command_id, action, family, schema_version FROM adaptation_decision "
                        "ORDER BY decision_id").fetchall()
    assert typed == [("d-0", None, None, None, 1), ("d-1", None, None, None, 1), ("d-2", "c-2", "advance", None, 4),
                     ("d-3", None, None, None, 4)]  # written by today's code: v4
    history = con.execute("SELECT decision_id, decision_action FROM adaptation_history ORDER BY decision_id").fetchall()
    assert history == EXPECTED_ACTIONS
    report = load_run(con, RUN)
    assert [(epoch, action) for epoch, action, _, _ in report.decisions] == [(0, "germinate"), (2, "advance")]


def test_the_comparison_view_reads_both_versions_like_the_counterfactual(tmp_path):
    stored(tmp_path / "nissa.duckdb")
    con = duckdb.connect(str(tmp_path / "nissa.duckdb"))
    would = [CODEC.decode(DECISIONS, m.value()).payload for m in decision_messages()]  # v1 read into the typed fields
    assert [d.action for d in would] == [CommandAction.GERMINATE, None, CommandAction.ADVANCE, None]
    write_counterfactual(con, RUN, would)
    rows = con.execute("SELECT epoch, real_decisions, counterfactual_decisions, same FROM decision_comparison "
                       "ORDER BY epoch").fetchall()
    assert [(e, r, same) for e, r, _, same in rows] == [
        (0, "add_seed germinate body.0[0] k-1", True), (1, "no_op - body.0", True),
        (2, "modify_architecture advance body.0[0]", True), (3, "no_op - -", True)]
    assert con.execute("SELECT decision_id, action FROM counterfactual_decisions ORDER BY 1").fetchall() == \
        EXPECTED_ACTIONS


def test_a_database_written_before_v2_gains_the_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "nissa.duckdb"
    current = table_for(DECISIONS, CODEC.store)
    v1_table = Table(current.name, current.record_name, columns_of(v1_schema()))
    assert not set(TYPED) & set(v1_table.column_names)
    old_row = pa.Table.from_pylist([
        {c.name: None for c in v1_table.columns} | {"event_id": "ev-old", "run_id": RUN, "decision_id": "d-old",
                                                   "adaptation_type": "add_seed", "metadata": [("action", "cull")],
                                                   "kafka_partition": 0, "kafka_offset": 99}],
        schema=v1_table.arrow_schema)
    with duckdb.connect(str(path)) as con:  # the table as the sink of v1 created and filled it
        con.execute(v1_table.ddl())
        con.register("old_row", old_row)
        con.execute(f"INSERT INTO {v1_table.name} SELECT * FROM old_row")
        con.execute("CREATE VIEW adaptation_history AS SELECT decision_id, metadata FROM adaptation_decision")

    stored(path)  # the upgraded sink: new columns appended, new rows inserted by name
    con = duckdb.connect(str(path), read_only=True)
    assert set(TYPED) <= set(table_columns(con, "adaptation_decision"))
    history = con.execute("SELECT decision_id, decision_action FROM adaptation_history ORDER BY decision_id").fetchall()
    assert history == EXPECTED_ACTIONS + [("d-old", "cull")]
    assert con.execute("SELECT action FROM adaptation_decision WHERE decision_id = 'd-2'").fetchall() == [("advance",)]


class TimedMessage(FakeMessage):
    def timestamp(self):
        return (1, 1_700_000_000_000)


def test_an_archive_written_before_v2_reads_without_the_new_columns(tmp_path):
    messages = [TimedMessage(m._topic, m._partition, m._offset, m._value, m._key) for m in decision_messages()]
    batch = new_batch()
    batch.add(messages)
    table = table_for(DECISIONS, CODEC.store)
    rows = archive_table(table, batch.drain()[table.name], messages)
    write_archive_files(tmp_path, DECISIONS.name, True, rows.drop_columns(list(TYPED)))  # as v1's Nissa wrote it
    con = archive_connection(tmp_path)
    assert con.execute("SELECT count(*), count(action) FROM adaptation_decision").fetchone() == (4, 0)
    history = con.execute("SELECT decision_id, decision_action FROM adaptation_history ORDER BY decision_id").fetchall()
    assert history == [("d-0", "germinate"), ("d-1", None), ("d-2", None), ("d-3", None)]  # d-2's column was dropped
