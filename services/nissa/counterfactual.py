"""Counterfactual decisions: a Tamiyo policy re-driven over a replayed run, written beside the real ones.

Pure of Kafka: the caller hands over the raw Avro values of the run's input topics and of
the catalogue topics (``{registry topic name: [value bytes in log order]}``), read from the
log or the archive. They are decoded with the codec (exact writer schemas), folded into a
``RecordedRun`` and a Urza ``Catalog``, and ``services.tamiyo.recorded.replay_decisions``
decides epoch by epoch; nothing is sent anywhere.

Tables and views written into the replay database:

* ``counterfactual_decisions``: one row per would-be decision (run_id, policy_version,
  decision_id, epoch, adaptation_type, action (NULL when none, as in ``adaptation_decision``),
  layer_name, layer_id, seed_idx, blueprint_id, kernel_id, confidence, urgency, reason).
* ``decision_comparison``: per run and epoch, the real decisions (``adaptation_decision``)
  and the counterfactual ones summarised as text (``type action layer[seed] kernel``, sorted
  by decision id), their policy versions and ``same`` (the two summaries are equal).
"""

from __future__ import annotations

import duckdb

from contracts import AdaptationDecision
from services.nissa.views import decision_action_sql
from services.oona.codec import Codec
from services.oona.errors import DecodeError
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import PolicyRecord
from services.tamiyo.recorded import RUN_TOPICS, RecordedRun, replay_decisions
from services.tamiyo.service import CatalogChooser
from services.urza.catalog import CATALOG_TOPICS, Catalog

# What a counterfactual replay needs besides the run's own events.
NEEDED_TOPICS: tuple[str, ...] = tuple(t.value for t in (*RUN_TOPICS, *CATALOG_TOPICS))

COUNTERFACTUAL_DDL = """
CREATE TABLE IF NOT EXISTS counterfactual_decisions (
  run_id VARCHAR, policy_version VARCHAR, decision_id VARCHAR, epoch BIGINT, adaptation_type VARCHAR,
  action VARCHAR, layer_name VARCHAR, layer_id BIGINT, seed_idx BIGINT, blueprint_id VARCHAR, kernel_id VARCHAR,
  confidence DOUBLE, urgency DOUBLE, reason VARCHAR
)"""

_SUMMARY = ("adaptation_type || ' ' || coalesce(nullif({action}, ''), '-') || ' ' || layer_name"
            " || coalesce('[' || seed_idx || ']', '') || coalesce(' ' || kernel_id, '')")

COMPARISON_VIEW = f"""
CREATE OR REPLACE VIEW decision_comparison AS
WITH real AS (
  SELECT run_id, epoch, string_agg(DISTINCT policy_version, ',') AS real_policy_version,
         string_agg({_SUMMARY.format(action=decision_action_sql())}, '; ' ORDER BY decision_id) AS real_decisions
  FROM adaptation_decision GROUP BY run_id, epoch
), counterfactual AS (
  SELECT run_id, epoch, string_agg(DISTINCT policy_version, ',') AS counterfactual_policy_version,
         string_agg({_SUMMARY.format(action="action")}, '; ' ORDER BY decision_id) AS counterfactual_decisions
  FROM counterfactual_decisions GROUP BY run_id, epoch
)
SELECT run_id, epoch, real_policy_version, real_decisions, counterfactual_policy_version, counterfactual_decisions,
       real_decisions IS NOT DISTINCT FROM counterfactual_decisions AS same
FROM real FULL OUTER JOIN counterfactual USING (run_id, epoch)
ORDER BY run_id, epoch
"""


def _decoded(codec: Codec, name: str, values: list[bytes]) -> list:
    spec = topic_spec(name)
    payloads = []
    for value in values:
        try:
            payloads.append(codec.decode(spec, value).payload)
        except DecodeError:
            continue  # dead-lettered by the services that consumed it; the sink recorded it
    return payloads


def recorded_run(run_id: str, values: dict[str, list[bytes]], codec: Codec) -> RecordedRun:
    """The run's events on Tamiyo's topics as a RecordedRun (payloads in the order given)."""
    return RecordedRun(run_id, {t.value: _decoded(codec, t.value, values.get(t.value, [])) for t in RUN_TOPICS})


def catalog_of(values: dict[str, list[bytes]], codec: Codec) -> Catalog:
    """Urza's catalogue from the catalogue topics' values (each topic in order, as ``load_catalog``)."""
    catalog = Catalog()
    for topic in CATALOG_TOPICS:
        for payload in _decoded(codec, topic.value, values.get(topic.value, [])):
            catalog.apply(topic.value, payload)
    return catalog


def counterfactual_decisions(run_id: str, values: dict[str, list[bytes]], codec: Codec, policy: TamiyoPolicy,
                             record: PolicyRecord) -> tuple[str, list[AdaptationDecision]]:
    """(policy version, what the policy (from ``load_policy``) decides over the run)."""
    decider = Decider(policy, record.version, CatalogChooser(catalog_of(values, codec)))
    return record.version, replay_decisions(recorded_run(run_id, values, codec), decider)


def decision_rows(run_id: str, decisions: list[AdaptationDecision]) -> list[tuple]:
    return [(run_id, d.policy_version, d.decision_id, d.epoch, d.adaptation_type.value,
             d.action.value if d.action else None, d.layer_name, d.layer_id, d.seed_idx, d.blueprint_id, d.kernel_id,
             d.confidence, d.urgency, d.reason) for d in decisions]


def write_counterfactual(con: duckdb.DuckDBPyConnection, run_id: str, decisions: list[AdaptationDecision]) -> None:
    """Create the table and the comparison view; insert the decisions (one transaction)."""
    con.execute("BEGIN")
    con.execute(COUNTERFACTUAL_DDL)
    rows = decision_rows(run_id, decisions)
    if rows:
        con.executemany(f"INSERT INTO counterfactual_decisions VALUES ({', '.join('?' * len(rows[0]))})", rows)
    con.execute(COMPARISON_VIEW)
    con.execute("COMMIT")

