"""Views over the sink's tables, created (CREATE OR REPLACE) every time the sink starts.

* ``adaptation_history``: one row per decision -> command -> seed transition -> field report
  (``decision_id``, ``command_id``, then the seed ``run_id + layer_id + seed_idx + kernel_id``);
  decisions without a command, commands without a decision and transitions no command
  caused are kept by outer joins on the command side. ``decision_action`` is what the decision
  issued (``decision_action_sql``: also for decisions recorded before the typed field), ``action``
  the command's.
* ``seed_timeline``: every seed transition, with the germinate command (and so the decision)
  that started that seed's life: the latest one for the same seed and kernel at or before it.
* ``blueprint_history``: per run and blueprint: decisions, commands, germinations,
  fossilizations, culls, field reports and the mean metric change they reported.
* ``layer_health``: per run, epoch and layer: signals, seeds, mean/min health and the mean
  activation, dead-neuron, correlation and gradient statistics.
* ``runs``: per run: last status, name, dataset, epochs completed, seeds germinated /
  fossilized / culled, final validation accuracy (the session's, else the last epoch's), and for
  a fork (``esper run --fork``) its parent run and fork epoch (its epochs are those after it).
* ``run_lineage``: the fork tree: per run its parent, fork epoch, root (the first ancestor
  Nissa knows), depth (0 for a root), ``lineage`` (root > ... > run), controller
  (``no_adapt``, ``policy VERSION`` or ``default``: the promoted policy), status and final
  validation accuracy. A run whose parent Nissa has not seen is a root that names its parent.
* ``experiment_runs``: one row per run that ``esper experiment`` started: experiment id, arm,
  random seed, dataset, last status, final validation and test accuracy (the session's), the
  parameter count of the last epoch and the training seconds (sum over epochs).
* ``experiments``: per experiment and arm, over its completed runs: n, mean and 95 % CI
  half-width (Student's t, ``services/nissa/confidence.py``) of validation and test accuracy,
  mean parameters and training seconds, and the gain per 1k added parameters against the
  experiment's ``no_adapt`` arm: (mean val acc - no_adapt's) / ((parameters - no_adapt's) / 1000).
* ``dlq_summary``: per source topic, error type and origin: count, first / last failure and
  one example reason.
"""

from __future__ import annotations

import duckdb

from services.nissa.confidence import t_critical_sql


def decision_action_sql(alias: str = "") -> str:
    """SQL for the action an ``adaptation_decision`` row issued (NULL for none): the typed column
    (AdaptationDecision v2 on), else the ``metadata`` key Tamiyo wrote it under before (v1 rows)."""
    row = f"{alias}." if alias else ""
    return f"coalesce({row}action, nullif({row}metadata['action'], ''))"


VIEWS: dict[str, str] = {
    "adaptation_history": """
SELECT
  coalesce(d.run_id, c.run_id) AS run_id,
  d.decision_id, d.epoch AS decision_epoch, d.adaptation_type, """ + decision_action_sql("d") + """ AS decision_action,
  d.confidence, d.urgency,
  d.policy_version, d.reason AS decision_reason, d.timestamp AS decided_at,
  coalesce(c.layer_name, d.layer_name) AS layer_name,
  coalesce(c.layer_id, d.layer_id) AS layer_id,
  coalesce(c.seed_idx, d.seed_idx) AS seed_idx,
  coalesce(c.blueprint_id, d.blueprint_id) AS blueprint_id,
  coalesce(c.kernel_id, d.kernel_id) AS kernel_id,
  c.command_id, c.action, c.issued_at_epoch,
  t.from_state, t.to_state, t.epoch AS transition_epoch, t.reason AS transition_reason,
  f.outcome AS field_outcome, f.pre_metric, f.post_metric, f.post_metric - f.pre_metric AS metric_delta,
  f.epochs_active
FROM adaptation_decision d
FULL OUTER JOIN kasmina_command c ON c.decision_id = d.decision_id
LEFT JOIN seed_transition t ON t.command_id = c.command_id
LEFT JOIN field_report f
  ON f.run_id = coalesce(d.run_id, c.run_id)
 AND f.layer_id = coalesce(c.layer_id, d.layer_id)
 AND f.seed_idx = coalesce(c.seed_idx, d.seed_idx)
 AND f.kernel_id = coalesce(c.kernel_id, d.kernel_id)
""",
    "blueprint_history": """
WITH per_blueprint AS (
  SELECT run_id, blueprint_id,
         count(DISTINCT decision_id) AS decisions,
         count(DISTINCT command_id) AS commands
  FROM adaptation_history WHERE blueprint_id IS NOT NULL GROUP BY ALL
), seeds AS (
  SELECT c.run_id, c.blueprint_id,
         count(*) FILTER (WHERE t.to_state = 'germinated') AS germinated,
         count(*) FILTER (WHERE t.to_state = 'fossilized') AS fossilized,
         count(*) FILTER (WHERE t.to_state = 'culled') AS culled
  FROM seed_transition t
  JOIN kasmina_command c ON c.run_id = t.run_id AND c.layer_id = t.layer_id AND c.seed_idx = t.seed_idx
   AND c.kernel_id = t.kernel_id AND c.action = 'germinate'
  WHERE c.blueprint_id IS NOT NULL GROUP BY ALL
), reports AS (
  SELECT run_id, blueprint_id, count(*) AS field_reports, avg(post_metric - pre_metric) AS mean_metric_delta
  FROM field_report GROUP BY ALL
)
SELECT run_id, blueprint_id,
       coalesce(p.decisions, 0) AS decisions, coalesce(p.commands, 0) AS commands,
       coalesce(s.germinated, 0) AS germinated, coalesce(s.fossilized, 0) AS fossilized,
       coalesce(s.culled, 0) AS culled,
       coalesce(r.field_reports, 0) AS field_reports, r.mean_metric_delta
FROM per_blueprint p
FULL OUTER JOIN seeds s USING (run_id, blueprint_id)
FULL OUTER JOIN reports r USING (run_id, blueprint_id)
""",
    "seed_timeline": """
SELECT t.run_id, t.layer_id, t.seed_idx, t.layer_name, t.kernel_id, g.blueprint_id,
       t.epoch, t.from_state, t.to_state, t.reason, t.command_id, t.timestamp,
       g.command_id AS germinated_by, g.decision_id
FROM seed_transition t
ASOF LEFT JOIN (SELECT * FROM kasmina_command WHERE action = 'germinate') g
  ON g.run_id = t.run_id AND g.layer_id = t.layer_id AND g.seed_idx = t.seed_idx AND g.kernel_id = t.kernel_id
 AND t.epoch >= g.issued_at_epoch
""",
    "layer_health": """
SELECT run_id, epoch, layer_id, any_value(layer_name) AS layer_name,
       count(*) AS signals, count(DISTINCT seed_idx) AS seeds,
       avg(health_score) AS mean_health, min(health_score) AS min_health,
       avg(activation_variance) AS mean_activation_variance, avg(dead_neuron_ratio) AS mean_dead_neuron_ratio,
       avg(avg_correlation) AS mean_correlation, avg(gradient_norm) AS mean_gradient_norm,
       max(capacity_gain) AS capacity_gain,
       max(active_seeds) AS active_seeds, sum(error_count) AS errors
FROM health_signal GROUP BY run_id, epoch, layer_id
""",
    "runs": """
WITH sessions AS (
  SELECT run_id,
         arg_max(session_status, timestamp) AS status,
         arg_max(session_name, timestamp) AS name,
         arg_max(session_training_config_dataset, timestamp) AS dataset,
         arg_max(session_training_config_epochs, timestamp) AS planned_epochs,
         arg_max(final_validation_accuracy, timestamp) AS session_final_accuracy,
         max(parent_run_id) AS parent_run_id, max(fork_epoch) AS fork_epoch,
         min(timestamp) AS started_at, max(timestamp) AS updated_at
  FROM training_session_event GROUP BY run_id
), epochs AS (
  SELECT run_id, count(DISTINCT state_epoch) AS epochs, max(state_epoch) AS last_epoch,
         arg_max(validation_accuracy, state_epoch) AS last_validation_accuracy
  FROM epoch_completed GROUP BY run_id
), seeds AS (
  SELECT run_id,
         count(*) FILTER (WHERE to_state = 'germinated') AS seeds_germinated,
         count(*) FILTER (WHERE to_state = 'fossilized') AS seeds_fossilized,
         count(*) FILTER (WHERE to_state = 'culled') AS seeds_culled
  FROM seed_transition GROUP BY run_id
)
SELECT run_id, s.name, s.dataset, coalesce(s.status, 'unknown') AS status,
       coalesce(e.epochs, 0) AS epochs, s.planned_epochs,
       coalesce(t.seeds_germinated, 0) AS seeds_germinated,
       coalesce(t.seeds_fossilized, 0) AS seeds_fossilized,
       coalesce(t.seeds_culled, 0) AS seeds_culled,
       coalesce(s.session_final_accuracy, e.last_validation_accuracy) AS final_validation_accuracy,
       s.parent_run_id, s.fork_epoch, s.started_at, s.updated_at
FROM sessions s
FULL OUTER JOIN epochs e USING (run_id)
LEFT JOIN seeds t USING (run_id)
""",
    "run_lineage": """
WITH RECURSIVE sessions AS (
  SELECT run_id, max(parent_run_id) AS parent_run_id, max(fork_epoch) AS fork_epoch,
         arg_max(policy_version, timestamp) AS policy_version,
         arg_max(session_training_config_adaptation_enabled, timestamp) AS adaptation_enabled,
         arg_max(session_status, timestamp) AS status,
         arg_max(final_validation_accuracy, timestamp) AS final_validation_accuracy
  FROM training_session_event GROUP BY run_id
), tree AS (
  SELECT run_id, run_id AS root_run_id, 0 AS depth, [run_id] AS path
  FROM sessions WHERE parent_run_id IS NULL OR parent_run_id NOT IN (SELECT run_id FROM sessions)
  UNION ALL
  SELECT s.run_id, t.root_run_id, t.depth + 1, list_append(t.path, s.run_id)
  FROM sessions s JOIN tree t ON s.parent_run_id = t.run_id
  WHERE NOT list_contains(t.path, s.run_id)  -- a tree by construction; the log is not trusted to be one
)
SELECT t.run_id, s.parent_run_id, s.fork_epoch, t.root_run_id, t.depth, array_to_string(t.path, ' > ') AS lineage,
       CASE WHEN NOT s.adaptation_enabled THEN 'no_adapt'
            ELSE coalesce('policy ' || s.policy_version, 'default') END AS controller,
       s.status, s.final_validation_accuracy
FROM tree t JOIN sessions s USING (run_id)
""",
    "experiment_runs": """
WITH sessions AS (
  SELECT run_id, any_value(experiment_id) AS experiment_id, any_value(experiment_arm) AS arm,
         arg_max(session_training_config_random_seed, timestamp) AS seed,
         arg_max(session_training_config_dataset, timestamp) AS dataset,
         arg_max(session_status, timestamp) AS status,
         arg_max(final_validation_accuracy, timestamp) AS validation_accuracy,
         arg_max(final_test_accuracy, timestamp) AS test_accuracy
  FROM training_session_event WHERE experiment_id IS NOT NULL GROUP BY run_id
), per_epoch AS (  -- one row per epoch, however often it was read
  SELECT run_id, state_epoch, any_value(parameter_count) AS parameter_count, any_value(epoch_seconds) AS seconds
  FROM epoch_completed WHERE run_id IN (SELECT run_id FROM sessions) GROUP BY run_id, state_epoch
), epochs AS (
  SELECT run_id, arg_max(parameter_count, state_epoch) AS parameters, sum(seconds) AS train_seconds
  FROM per_epoch GROUP BY run_id
)
SELECT s.experiment_id, s.arm, s.seed, s.run_id, s.dataset, s.status, s.validation_accuracy, s.test_accuracy,
       e.parameters, e.train_seconds
FROM sessions s LEFT JOIN epochs e USING (run_id)
""",
    "experiments": """
WITH arms AS (
  SELECT experiment_id, arm, any_value(dataset) AS dataset, count(*) AS n,
         avg(validation_accuracy) AS val_mean, stddev_samp(validation_accuracy) AS val_sd,
         avg(test_accuracy) AS test_mean, stddev_samp(test_accuracy) AS test_sd,
         avg(parameters) AS parameters, avg(train_seconds) AS train_seconds
  FROM experiment_runs WHERE status = 'completed' GROUP BY experiment_id, arm
)
SELECT a.experiment_id, a.arm, a.dataset, a.n,
       a.val_mean, """ + t_critical_sql("(a.n - 1)") + """ * a.val_sd / sqrt(a.n) AS val_ci95,
       a.test_mean, """ + t_critical_sql("(a.n - 1)") + """ * a.test_sd / sqrt(a.n) AS test_ci95,
       a.parameters, a.train_seconds,
       CASE WHEN a.arm <> 'no_adapt' THEN (a.val_mean - b.val_mean) / nullif((a.parameters - b.parameters) / 1000.0, 0)
       END AS gain_per_1k_params
FROM arms a
LEFT JOIN arms b ON b.experiment_id = a.experiment_id AND b.arm = 'no_adapt'
""",
    "dlq_summary": """
SELECT source_topic, error_type, origin, count(*) AS dead_letters,
       min(failed_at) AS first_failed_at, max(failed_at) AS last_failed_at,
       any_value(reason) AS example_reason
FROM dead_letters GROUP BY ALL
""",
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
