"""What a run report shows, read from Nissa's DuckDB tables and views (any connection: file or archive).

``load_run(con, run_id) -> RunData``:

* per epoch (``epoch_completed``, one row per ``state_epoch``, the latest if repeated):
  train / validation accuracy, parameter count, seed parameter count;
* adaptation events (``seed_transition``): germinate (-> germinated), advance (-> grafting),
  fossilize (-> fossilized), cull (-> culled), at the transition's epoch;
* decisions that did something (``adaptation_decision`` rows that issued an action);
* seed states per slot ``layer_name[seed_idx]``: ``[(epoch, to_state), ...]`` in order;
* health (``layer_health``): layers x epochs of mean health score (None where no signal);
* the ``runs`` view's row (status, epochs, seeds germinated / fossilized / culled, final accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from services.nissa.errors import UnknownRunError
from services.nissa.views import decision_action_sql

# to_state -> adaptation event kind
EVENT_BY_STATE = {"germinated": "germinate", "grafting": "advance", "fossilized": "fossilize", "culled": "cull"}
EVENT_KINDS = tuple(EVENT_BY_STATE.values())

ACTION = decision_action_sql()  # what a decision issued, typed or (older records) in its metadata


@dataclass(frozen=True)
class Event:
    epoch: int
    kind: str  # germinate / advance / fossilize / cull
    seed: str  # layer_name[seed_idx]


@dataclass
class RunData:
    run_id: str
    epochs: list[int] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    validation_accuracy: list[float] = field(default_factory=list)
    parameter_count: list[int] = field(default_factory=list)
    seed_parameter_count: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    decisions: list[tuple[int, str, str, str]] = field(default_factory=list)  # epoch, action, layer, reason
    seed_states: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    health_layers: list[str] = field(default_factory=list)
    health_epochs: list[int] = field(default_factory=list)
    health: list[list[float | None]] = field(default_factory=list)  # [layer][epoch index]
    summary: dict[str, object] = field(default_factory=dict)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> list[tuple]:
    return con.execute(sql, [run_id]).fetchall()


def load_run(con: duckdb.DuckDBPyConnection, run_id: str) -> RunData:
    """Everything the report plots for ``run_id``; UnknownRunError when the database has nothing of it."""
    cursor = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    found = cursor.fetchone()
    if found is None:
        raise UnknownRunError(f"run {run_id!r} is not in the Nissa database (see `esper runs`)")
    run = RunData(run_id, summary=dict(zip([d[0] for d in cursor.description], found, strict=True)))
    for epoch, train, val, params, seed_params in _rows(con, """
        SELECT state_epoch, arg_max(train_accuracy, timestamp), arg_max(validation_accuracy, timestamp),
               arg_max(parameter_count, timestamp), arg_max(seed_parameter_count, timestamp)
        FROM epoch_completed WHERE run_id = ? GROUP BY state_epoch ORDER BY state_epoch""", run_id):
        run.epochs.append(epoch)
        run.train_accuracy.append(train)
        run.validation_accuracy.append(val)
        run.parameter_count.append(params)
        run.seed_parameter_count.append(seed_params)
    for layer, seed, epoch, state in _rows(con, """
        SELECT layer_name, seed_idx, epoch, to_state FROM seed_transition WHERE run_id = ?
        ORDER BY epoch, timestamp, kafka_offset""", run_id):
        label = f"{layer}[{seed}]"
        run.seed_states.setdefault(label, []).append((epoch, state))
        if state in EVENT_BY_STATE:
            run.events.append(Event(epoch, EVENT_BY_STATE[state], label))
    run.decisions = _rows(con, f"""
        SELECT epoch, {ACTION}, layer_name || coalesce('[' || seed_idx || ']', ''), reason
        FROM adaptation_decision WHERE run_id = ? AND {ACTION} IS NOT NULL ORDER BY epoch, decision_id""",
                          run_id)
    health = _rows(con, "SELECT layer_name, epoch, mean_health FROM layer_health WHERE run_id = ? ORDER BY layer_id",
                   run_id)
    run.health_layers = list(dict.fromkeys(layer for layer, _, _ in health))
    run.health_epochs = sorted({epoch for _, epoch, _ in health})
    cell = {(layer, epoch): value for layer, epoch, value in health}
    run.health = [[cell.get((layer, epoch)) for epoch in run.health_epochs] for layer in run.health_layers]
    return run
