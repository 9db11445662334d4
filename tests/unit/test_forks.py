"""Forks without a broker: the per-epoch checkpoint window, the fork point's checks, the fork's lineage and
controller, the session it announces, the CLI's one-line refusals, Nissa's lineage view and the aligned report."""

from __future__ import annotations

import contextlib
import io
import re

import duckdb
import pytest
import torch

from contracts import SessionStatus
from services.cli.main import main
from services.nissa.report import align_fork, render
from services.nissa.report_data import load_run
from services.oona.topic_registry import topic_spec
from services.tolaria.checkpoint import (
    BudgetRecord,
    Checkpoint,
    CheckpointMeta,
    CheckpointStatus,
    PendingCommand,
    checkpoint_path,
    epoch_checkpoint_path,
    expired_epochs,
    keep_epoch,
    kept_epochs,
    load_checkpoint,
    save_checkpoint,
)
from services.tolaria.config import ConfigError, ForkOrigin, parse_config
from services.tolaria.fork import ForkError, ForkRequest, check_fork_point, forked, load_fork_point
from services.tolaria.session_event import session_event
from services.tolaria.training_setup import build_training
from tests.samples import message_for
from tests.unit.nissa_fakes import CODEC, Message, new_batch, new_store

TINY = {"name": "fork-unit", "epochs": 6, "device": "cpu",
        "data": {"dataset": "spirals", "spiral_points": 20}, "model": {"kind": "mlp", "hidden": [4]}}
PENDING = PendingCommand(topic="esper.commands", partition=0, offset=7, key="6b", value="00")


def meta(run_id: str = "parent", next_epoch: int = 4, **config: object) -> CheckpointMeta:
    return CheckpointMeta(
        run_id=run_id, config=parse_config({**TINY, **config}), no_adapt=False, next_epoch=next_epoch,
        status=CheckpointStatus.RUNNING, kernels="[]",
        budget=BudgetRecord(germinations=1, last_germination_epoch=1, applied=["c-1"]),
        log_positions={"p.system.events.epoch": {0: 12, 1: 3}, "p.training.sessions": {0: 2}},
        pending_commands=[PENDING],
    )


def write_run(state_dir, run_id: str = "parent", epochs: int = 4, **config: object) -> None:
    """A run that checkpointed the end of epochs 0 .. epochs-1 as Tolaria does: save, then keep."""
    cfg = parse_config({**TINY, **config})
    model = {"w": torch.zeros(2)}
    for epoch in range(epochs):
        model = {"w": torch.full((2,), float(epoch))}
        save_checkpoint(checkpoint_path(state_dir, run_id), Checkpoint(model, {}, meta(run_id, epoch + 1, **config)))
        keep_epoch(state_dir, run_id, epoch, cfg.checkpoint_keep_epochs)


# -- the window ---------------------------------------------------------------------------------
def test_the_window_keeps_the_last_n_checkpointed_epochs():
    assert expired_epochs([0, 1, 2, 3, 4], latest=4, window=3) == [0, 1]
    assert expired_epochs([1, 3, 5, 7], latest=7, window=2) == [1, 3]  # checkpointed every 2 epochs
    assert expired_epochs([0, 1], latest=1, window=5) == []
    assert expired_epochs([0, 1, 2], latest=2, window=0) == [0, 1, 2]


def test_kept_epochs_hold_each_epochs_own_bytes_and_expire_out_of_the_window(tmp_path):
    write_run(tmp_path, epochs=5, checkpoint_keep_epochs=3)
    assert kept_epochs(tmp_path, "parent") == [2, 3, 4]
    for epoch in (2, 3, 4):  # each a link to the checkpoint of its own epoch, not to the latest file
        kept = load_checkpoint(epoch_checkpoint_path(tmp_path, "parent", epoch))
        assert kept.meta.next_epoch == epoch + 1 and kept.model["w"].tolist() == [float(epoch)] * 2
    assert load_checkpoint(checkpoint_path(tmp_path, "parent")).meta.next_epoch == 5


def test_a_window_of_zero_keeps_no_epoch(tmp_path):
    write_run(tmp_path, epochs=3, checkpoint_keep_epochs=0)
    assert kept_epochs(tmp_path, "parent") == []
    with pytest.raises(ForkError, match="has expired: kept none"):
        load_fork_point(tmp_path, "child", ForkRequest("parent", 1))


# -- the fork point -----------------------------------------------------------------------------
@pytest.mark.parametrize(("at_epoch", "kept", "config", "message"), [
    (4, [0, 1, 2, 3], {}, "run parent has ended epochs 0..3; epoch 4 is beyond it"),
    (9, [0, 1, 2, 3], {}, "epoch 9 is beyond it"),
    (-1, [0, 1, 2, 3], {}, "--at-epoch must be 0 or more"),
    (0, [2, 3], {"checkpoint_keep_epochs": 2}, "the checkpoint of epoch 0 of run parent has expired: kept epochs "
                                               "2..3 (2) (checkpoint_keep_epochs=2)"),
    (2, [1, 3], {"checkpoint_every_epochs": 2},
     "wrote no checkpoint at the end of epoch 2 (checkpoint_every_epochs=2)"),
])
def test_bad_fork_points_are_refused_in_one_line(at_epoch, kept, config, message):
    with pytest.raises(ForkError, match=re.escape(message)) as exc:
        check_fork_point(meta(**config), kept, at_epoch)
    assert "\n" not in str(exc.value)


def test_a_fork_of_a_fork_starts_after_its_own_fork_point():
    child = meta("child", 6, fork={"parent_run_id": "parent", "epoch": 2})
    with pytest.raises(ForkError, match="fork parent at epoch 2 instead"):
        check_fork_point(child, [3, 4, 5], 2)
    check_fork_point(child, [3, 4, 5], 3)


def test_unknown_runs_and_taken_run_ids_are_refused(tmp_path):
    with pytest.raises(ForkError, match="unknown run nope: no checkpoint in"):
        load_fork_point(tmp_path, "child", ForkRequest("nope", 0))
    write_run(tmp_path)
    write_run(tmp_path, "taken")
    with pytest.raises(ForkError, match="run taken already exists"):
        load_fork_point(tmp_path, "taken", ForkRequest("parent", 1))


# -- the fork's checkpoint ----------------------------------------------------------------------
def test_a_fork_starts_after_the_epoch_with_the_parents_tensors_and_records_its_lineage(tmp_path):
    write_run(tmp_path, epochs=4)
    start = load_fork_point(tmp_path, "child", ForkRequest("parent", 1))
    assert start.model["w"].tolist() == [1.0, 1.0]  # the end of epoch 1, not the latest checkpoint
    m = start.meta
    assert (m.run_id, m.next_epoch, m.status, m.no_adapt) == ("child", 2, CheckpointStatus.RUNNING, False)
    assert m.log_positions == {} and m.budget.applied == ["c-1"] and m.kernels == "[]"
    assert m.config.fork == ForkOrigin(parent_run_id="parent", epoch=1, parent_log_position={
        "p.system.events.epoch:0": 12, "p.system.events.epoch:1": 3, "p.training.sessions:0": 2})
    assert m.config.epochs == 6 and m.config.experiment is None


def test_the_controller_of_a_fork():
    parent = Checkpoint({}, {}, meta(policy_version="gnn-000000000001"))
    same = forked(parent, "same", ForkRequest("parent", 3)).meta
    assert (same.no_adapt, same.config.policy_version, same.pending_commands) == (False, "gnn-000000000001", [PENDING])
    quiet = forked(parent, "quiet", ForkRequest("parent", 3, no_adapt=True)).meta
    assert (quiet.no_adapt, quiet.config.policy_version, quiet.pending_commands) == (True, None, [])
    other = forked(parent, "other", ForkRequest("parent", 3, policy_version="gnn-000000000002")).meta
    assert (other.no_adapt, other.config.policy_version, other.pending_commands) == (False, "gnn-000000000002", [])
    baseline = Checkpoint({}, {}, meta().model_copy(update={"no_adapt": True}))
    assert forked(baseline, "b", ForkRequest("parent", 3)).meta.no_adapt  # a --no-adapt parent's fork stays so
    assert not forked(baseline, "b", ForkRequest("parent", 3, policy_version="gnn-000000000002")).meta.no_adapt


def test_a_forks_epochs_and_policy_are_checked():
    parent = Checkpoint({}, {}, meta())
    assert forked(parent, "c", ForkRequest("parent", 3, epochs=12)).meta.config.epochs == 12
    with pytest.raises(ForkError, match="--epochs 4 leaves nothing to train after epoch 3"):
        forked(parent, "c", ForkRequest("parent", 3, epochs=4))
    with pytest.raises(ConfigError, match="policy_version"):
        forked(parent, "c", ForkRequest("parent", 3, policy_version="no spaces"))


def test_the_session_of_a_fork_names_its_lineage_and_policy():
    cfg = parse_config({**TINY, "policy_version": "gnn-000000000002",
                        "fork": {"parent_run_id": "parent", "epoch": 3, "parent_log_position": {"t:0": 9}}})
    event = session_event("child", cfg, build_training(cfg, adapt=True), True, SessionStatus.RUNNING)
    assert (event.parent_run_id, event.fork_epoch, event.parent_log_position, event.policy_version) == (
        "parent", 3, {"t:0": 9}, "gnn-000000000002")
    plain = session_event("run", parse_config(TINY), build_training(parse_config(TINY), adapt=False), False,
                          SessionStatus.RUNNING)
    assert (plain.parent_run_id, plain.fork_epoch, plain.parent_log_position, plain.policy_version) == (
        None, None, {}, None)


# -- the command line ---------------------------------------------------------------------------
def _esper(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_bad_forks_on_the_command_line_are_one_line_and_exit_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ESPER_STATE_DIR", str(tmp_path))
    write_run(tmp_path, epochs=4, checkpoint_keep_epochs=2)
    for argv, message in [
        (["--fork", "nope", "--at-epoch", "1"], "esper: error: unknown run nope"),
        (["--fork", "parent", "--at-epoch", "7"], "esper: error: run parent has ended epochs 0..3; epoch 7 is beyond"),
        (["--fork", "parent", "--at-epoch", "0"], "esper: error: the checkpoint of epoch 0 of run parent has expired"),
        (["--fork", "parent", "--at-epoch", "3", "--epochs", "4"], "esper: error: --epochs 4 leaves nothing"),
    ]:
        code, err = _esper(["run", *argv])
        assert (code, err.count("\n")) == (1, 1) and err.startswith(message), (argv, err)


def test_fork_usage_errors_exit_2():
    for argv in (["--fork", "p"], ["--at-epoch", "1", "c.yaml"], ["--fork", "p", "--at-epoch", "1", "--no-adapt",
                                                                   "--policy", "v1"],
                 ["--fork", "p", "--at-epoch", "1", "c.yaml"], ["--resume", "r", "--fork", "p"]):
        code, err = _esper(["run", *argv])
        assert code == 2 and "esper: error:" in err, (argv, err)


# -- Nissa --------------------------------------------------------------------------------------
def _session(run_id: str, parent: str | None, fork_epoch: int | None, adapt: bool = True,
             policy: str | None = None, offset: int = 0) -> Message:
    spec = topic_spec("training.sessions")
    sample = message_for(spec)
    session = sample.payload.session.model_copy(update={
        "session_id": run_id,
        "training_config": sample.payload.session.training_config.model_copy(update={"adaptation_enabled": adapt})})
    payload = sample.payload.model_copy(update={"session": session, "parent_run_id": parent, "fork_epoch": fork_epoch,
                                                "policy_version": policy})
    message = sample.model_copy(update={"run_id": run_id, "event_id": f"s-{run_id}", "payload": payload})
    return Message(spec.name, 0, offset, CODEC.encode(spec, message))


def test_run_lineage_shows_the_fork_tree(tmp_path):
    store = new_store(tmp_path / "nissa.duckdb")
    batch = new_batch()
    batch.add([_session("root", None, None, offset=0), _session("quiet", "root", 3, adapt=False, offset=1),
               _session("other", "root", 3, policy="gnn-000000000002", offset=2),
               _session("deep", "other", 5, offset=3),
               _session("orphan", "gone", 1, offset=4)])
    store.write(batch.drain(), {})
    store.close()
    with duckdb.connect(str(tmp_path / "nissa.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT run_id, parent_run_id, fork_epoch, root_run_id, depth, lineage, controller "
                           "FROM run_lineage ORDER BY lineage").fetchall()
        runs = con.execute("SELECT run_id, parent_run_id, fork_epoch FROM runs ORDER BY run_id").fetchall()
    assert rows == [
        ("orphan", "gone", 1, "orphan", 0, "orphan", "default"),
        ("root", None, None, "root", 0, "root", "default"),
        ("other", "root", 3, "root", 1, "root > other", "policy gnn-000000000002"),
        ("deep", "other", 5, "root", 2, "root > other > deep", "default"),
        ("quiet", "root", 3, "root", 1, "root > quiet", "no_adapt"),
    ]
    assert runs == [("deep", "other", 5), ("orphan", "gone", 1), ("other", "root", 3), ("quiet", "root", 3),
                    ("root", None, None)]


def test_a_report_compares_a_fork_with_its_parent_from_the_fork_point(tmp_path):
    store = new_store(tmp_path / "nissa.duckdb")
    batch = new_batch()
    epochs = topic_spec("system.events.epoch")
    sample = message_for(epochs)
    messages = [_session("root", None, None, offset=0), _session("kid", "root", 1, offset=1)]
    for i, (run_id, epoch, val) in enumerate([("root", 0, 0.5), ("root", 1, 0.6), ("root", 2, 0.7), ("root", 3, 0.8),
                                              ("kid", 2, 0.65), ("kid", 3, 0.9)]):
        payload = sample.payload.model_copy(update={
            "state": sample.payload.state.model_copy(update={"epoch": epoch}), "validation_accuracy": val})
        message = sample.model_copy(update={"run_id": run_id, "event_id": f"e-{i}", "payload": payload})
        messages.append(Message(epochs.name, 0, i, CODEC.encode(epochs, message)))
    batch.add(messages)
    store.write(batch.drain(), {})
    store.close()
    with duckdb.connect(str(tmp_path / "nissa.duckdb"), read_only=True) as con:
        runs = [load_run(con, "root"), load_run(con, "kid")]
    for order in (runs, runs[::-1]):
        alignment = align_fork(order)
        assert alignment is not None and (alignment.parent, alignment.fork, alignment.fork_epoch) == ("root", "kid", 1)
        assert [(e, p, f) for e, p, f, _ in alignment.rows] == [(2, 0.7, 0.65), (3, 0.8, 0.9)]
        assert [d for *_, d in alignment.rows] == pytest.approx([-0.05, 0.1])
    report = render(runs)
    assert report.fork == align_fork(runs) and 'data-fork-epoch="1"' in report.html
    assert align_fork([runs[0], runs[0]]) is None and align_fork(runs[:1]) is None
