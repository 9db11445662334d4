"""Counterfactual decisions written beside the real ones in a replay database.

What the policy would have decided comes from Tamiyo's public replay API (``services.tamiyo.replay_api``, imported
by the caller only when a policy is given); this module holds only the tables and views:

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

