"""Tolaria on the real broker: every event type, commands applied at the next boundary, bad commands to the DLQ."""

from __future__ import annotations

import uuid

from contracts import CommandAction, SeedState, layer_id_for_path
from contracts.dead_letter import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_REASON
from services.blueprints.starter import mlp_adapter
from services.tolaria.config import parse_config
from services.tolaria.run import start_run
from tests.integration.conftest import read_raw
from tests.integration.run_log import run_events
from tests.kafka_helpers import publish_command, publish_kernel

SPIRALS = {
    "name": "it-spirals", "epochs": 8, "batch_size": 32,
    "data": {"dataset": "spirals", "spiral_points": 300},
    "model": {"kind": "mlp", "hidden": [8]},
    "seeds": {"target_layers": ["body.0"], "per_layer": 2},
    "optimizer": {"lr": 0.01},
    "adaptation": {"training_epochs": 2, "grafting_steps": 20, "embargo_epochs": 1, "budget": 2},
}


def test_a_run_emits_everything_and_obeys_a_germinate_command(esper_settings):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    run_id = f"it-{uuid.uuid4().hex[:8]}"
    kernel_id = publish_kernel(kafka, mlp_adapter(2, 8, 32), prefix=prefix)
    body = layer_id_for_path("body.0")
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 0, kernel_id=kernel_id, epoch=1, prefix=prefix,
                    command_id="germinate-0")
    # Three commands that cannot be applied: they must end in the DLQ, the run unaffected.
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.9", 0, kernel_id=kernel_id, prefix=prefix,
                    layer_id=12345, command_id="unknown-seed")
    publish_command(kafka, run_id, CommandAction.FOSSILIZE, "body.0", 1, prefix=prefix, command_id="illegal-move")
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 1, kernel_id="k-missing", prefix=prefix,
                    command_id="missing-kernel")
    publish_command(kafka, "some-other-run", CommandAction.CULL, "body.0", 0, prefix=prefix, command_id="not-ours")

    cfg = parse_config({**SPIRALS, "adaptation": {**SPIRALS["adaptation"], "kernel_wait_s": 1}})
    result = start_run(cfg, esper_settings, run_id=run_id, progress=False)
    assert result.epochs == 8

    events = run_events(kafka, run_id)
    assert {t for t, _ in events} == {f"{prefix}{t}" for t in (
        "training.sessions", "telemetry.seed.health", "system.events.epoch", "lifecycle.seed.transitions",
        "innovation.field_reports")}, "every event type of a run"
    by_topic = lambda name: [m for t, m in events if t == prefix + name]  # noqa: E731
    sessions = [m.payload.session.status for m in by_topic("training.sessions")]
    assert sessions == ["running", "completed"]
    assert [m.payload.state.epoch for m in by_topic("system.events.epoch")] == list(range(8))
    assert sorted((m.payload.epoch, m.payload.seed_idx) for m in by_topic("telemetry.seed.health")) == [
        (e, i) for e in range(8) for i in range(2)]

    transitions = [m.payload for m in by_topic("lifecycle.seed.transitions") if m.payload.seed_idx == 0]
    path = [(t.from_state, t.to_state) for t in transitions]
    assert path[:3] == [(SeedState.DORMANT, SeedState.GERMINATED), (SeedState.GERMINATED, SeedState.TRAINING),
                        (SeedState.TRAINING, SeedState.GRAFTING)]
    assert path[3][0] is SeedState.GRAFTING and path[3][1] in (SeedState.FOSSILIZED, SeedState.CULLED)
    assert transitions[0].epoch == 1, "applied at the boundary of the epoch it was issued for"
    assert transitions[0].command_id == "germinate-0" and transitions[0].kernel_id == kernel_id
    assert [t.epoch for t in transitions] == sorted(t.epoch for t in transitions)
    [report] = by_topic("innovation.field_reports")
    assert report.payload.kernel_id == kernel_id and report.payload.outcome.value == path[3][1].value
    assert report.timestamp >= by_topic("lifecycle.seed.transitions")[3].timestamp
    assert all(t.payload.layer_id == body for t in by_topic("lifecycle.seed.transitions"))

    letters = read_raw(kafka, prefix + "esper.dlq", 3, timeout_s=15)
    reasons = sorted(dict(m.headers())[DLQ_HEADER_REASON].decode() for m in letters)
    assert len(reasons) == 3 and all(dict(m.headers())[DLQ_HEADER_ERROR_TYPE] == b"CommandRejected" for m in letters)
    assert "illegal-move rejected: seed" in reasons[0] and "illegal transition dormant -> fossilized" in reasons[0]
    assert "missing-kernel rejected: kernel k-missing is not in the library" in reasons[1]
    assert "unknown-seed rejected: unknown seed 12345:0" in reasons[2]


def test_no_adapt_keeps_seeds_dormant_and_rejects_germination(esper_settings):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    run_id = f"it-base-{uuid.uuid4().hex[:8]}"
    kernel_id = publish_kernel(kafka, mlp_adapter(2, 8, 32), prefix=prefix)
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 0, kernel_id=kernel_id, prefix=prefix,
                    command_id="nope")
    cfg = parse_config({**SPIRALS, "epochs": 5, "telemetry": {"every_epochs": 2}})
    result = start_run(cfg, esper_settings, run_id=run_id, no_adapt=True, progress=False)
    assert result.seed_states == {"dormant": 2} and result.seed_parameter_count == 0
    events = run_events(kafka, run_id)
    health = sorted({m.payload.epoch for t, m in events if t.endswith("telemetry.seed.health")})
    assert health == [1, 3, 4], "every second epoch, and at the end"
    assert not [m for t, m in events if t.endswith("lifecycle.seed.transitions")]
    started = next(m for t, m in events if t.endswith("training.sessions"))
    assert started.payload.session.training_config.adaptation_enabled is False
    [letter] = read_raw(kafka, prefix + "esper.dlq", 1, timeout_s=15)
    assert "adaptation is disabled for this run" in dict(letter.headers())[DLQ_HEADER_REASON].decode()


def test_a_diverging_run_fails_with_one_clear_line_and_its_session_says_so(esper_settings):
    from services.core.errors import EsperError

    run_id = f"it-nan-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({**SPIRALS, "epochs": 3, "optimizer": {"lr": 1e30}})
    try:
        start_run(cfg, esper_settings, run_id=run_id, no_adapt=True, progress=False)
    except EsperError as exc:
        message = str(exc)
    else:
        raise AssertionError("a run with lr=1e30 did not diverge")
    assert f"run {run_id} diverged in epoch 0" in message and "lower optimizer.lr" in message, message
    last = [m.payload for t, m in run_events(esper_settings.kafka, run_id) if t.endswith("training.sessions")][-1]
    assert last.session.status.value == "failed" and "diverged in epoch 0" in (last.error or ""), last
