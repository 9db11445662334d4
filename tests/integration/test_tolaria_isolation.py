"""A Tolaria run whose command fails unexpectedly dead-letters it with the exception and trains on."""

from __future__ import annotations

import uuid

from contracts import CommandAction
from contracts.dead_letter import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_REASON
from services.tolaria.commands import CommandApplier
from services.tolaria.config import parse_config
from services.tolaria.run import start_run
from tests.integration.conftest import read_raw
from tests.integration.run_log import run_events
from tests.kafka_helpers import publish_command

TINY = {
    "name": "it-isolation", "epochs": 3, "batch_size": 32,
    "data": {"dataset": "spirals", "spiral_points": 200},
    "model": {"kind": "mlp", "hidden": [8]},
    "seeds": {"target_layers": ["body.0"], "per_layer": 1},
    "adaptation": {"kernel_wait_s": 1},
}


def test_a_command_that_raises_is_dead_lettered_and_the_run_completes(esper_settings, monkeypatch):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    run_id = f"it-{uuid.uuid4().hex[:8]}"
    apply = CommandApplier.apply

    def exploding(self, command, *args, **kwargs):  # stands for a kernel that will not build, a bug, ...
        if command.command_id == "explodes":
            raise RuntimeError("kernel would not build")
        return apply(self, command, *args, **kwargs)

    monkeypatch.setattr(CommandApplier, "apply", exploding)
    publish_command(kafka, run_id, CommandAction.CULL, "body.0", 0, epoch=1, prefix=prefix, command_id="explodes")

    result = start_run(parse_config(TINY), esper_settings, run_id=run_id, progress=False)
    assert result.epochs == 3

    statuses = [m.payload.session.status for t, m in run_events(kafka, run_id) if t == prefix + "training.sessions"]
    assert statuses == ["running", "completed"]
    [letter] = read_raw(kafka, prefix + "esper.dlq", 1, timeout_s=15)
    headers = dict(letter.headers())
    assert headers[DLQ_HEADER_ERROR_TYPE] == b"RuntimeError"
    assert headers[DLQ_HEADER_REASON] == b"RuntimeError: kernel would not build"
