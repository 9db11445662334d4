"""Tolaria's checkpoints: the typed metadata reads the format written so far and restores a run without Kafka."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contracts import SeedId, SeedState, layer_id_for_path
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from services.tolaria.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    CheckpointStatus,
    load_checkpoint,
    save_checkpoint,
)
from services.tolaria.config import RunConfig
from services.tolaria.training_setup import build_training, restore

# Written by Tolaria before the metadata had a model or a version (a spirals run killed after epoch 1 of 3,
# with a germinated seed and a command due at epoch 50 carried in the checkpoint).
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "v1-germinated-pending.pt"
V1_PREFIX = "it.d189d2ba."


def test_a_checkpoint_of_the_first_format_loads_into_the_typed_model():
    checkpoint = load_checkpoint(V1)
    meta = checkpoint.meta
    assert meta.version == 1 and meta.run_id == "checkpoint-v1-fixture" and meta.status is CheckpointStatus.RUNNING
    assert meta.next_epoch == 2 and meta.no_adapt is False
    assert meta.config.epochs == 3 and meta.config.model.hidden == [8] and meta.config.seeds.per_layer == 2
    budget = meta.budget
    assert (budget.germinations, budget.last_germination_epoch, budget.applied) == (1, 1, ["germinate-0"])
    assert meta.log_positions[V1_PREFIX + "system.events.epoch"] == {0: 0, 1: 2, 2: 0}, "partitions as ints"
    [pending] = meta.pending_commands
    assert pending.topic == V1_PREFIX + "control.kasmina.commands" and pending.key_bytes == b"checkpoint-v1-fixture"
    command = SingleObjectCodec().decode(topic_spec("control.kasmina.commands", V1_PREFIX), pending.value_bytes)
    assert command.payload.command_id == "cull-later" and command.payload.issued_at_epoch == 50


def _same_but_for_added_defaults(written: dict, raw: dict, defaults: dict, where: str = "config") -> None:
    """``written`` is ``raw``, plus the fields added to the run config since, at their defaults."""
    assert set(raw) <= set(written), where
    for key, value in written.items():
        if key not in raw:
            assert value == defaults[key], f"{where}.{key} was added with its default"
        elif isinstance(value, dict) and isinstance(raw[key], dict):
            _same_but_for_added_defaults(value, raw[key], defaults.get(key) or {}, f"{where}.{key}")
        else:
            assert value == raw[key], f"{where}.{key}"


def test_the_typed_model_writes_the_first_format_plus_its_version():
    raw = json.loads(torch.load(V1, map_location="cpu", weights_only=True)["meta"])
    assert "version" not in raw
    written = json.loads(load_checkpoint(V1).meta.to_json())
    _same_but_for_added_defaults(written.pop("config"), raw.pop("config"), json.loads(RunConfig().model_dump_json()))
    assert written == {**raw, "version": CHECKPOINT_VERSION}


def test_a_first_format_checkpoint_restores_a_run_without_kafka():
    checkpoint = load_checkpoint(V1)
    setup = build_training(checkpoint.meta.config, adapt=True)
    restore(setup, checkpoint)
    body = layer_id_for_path("body.0")
    assert setup.manager.state(SeedId(layer_id=body, seed_idx=0)) is not SeedState.DORMANT
    assert setup.manager.kernel_info[SeedId(layer_id=body, seed_idx=0)].kernel_id.startswith("k-")
    state = setup.model.state_dict()
    assert set(state) == set(checkpoint.model)
    assert all(torch.equal(state[name], tensor) for name, tensor in checkpoint.model.items())
    assert (setup.budget.germinations, setup.budget.applied) == (1, ["germinate-0"])


def test_save_then_load_gives_back_the_same_checkpoint(tmp_path):
    original = load_checkpoint(V1)
    path = tmp_path / "runs" / "r" / "checkpoint.pt"
    save_checkpoint(path, original)
    again = load_checkpoint(path)
    assert again.meta == original.meta
    assert all(torch.equal(again.model[k], v) for k, v in original.model.items())
    assert not path.with_suffix(".tmp").exists()


def _with_meta(tmp_path: Path, meta: object) -> Path:
    data = torch.load(V1, map_location="cpu", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    torch.save({**data, "meta": json.dumps(meta)}, path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda raw: {**raw, "version": 2}, "has version 2; this Esper reads 1"),
    (lambda raw: {**raw, "next_epoch": "soon"}, "unreadable metadata: ValidationError"),
    (lambda raw: {k: v for k, v in raw.items() if k != "budget"}, "unreadable metadata: ValidationError"),
    (lambda raw: ["not", "a", "dict"], "unreadable metadata: AttributeError"),
])
def test_metadata_that_cannot_be_read_is_a_one_line_checkpoint_error(tmp_path, change, message):
    raw = json.loads(torch.load(V1, map_location="cpu", weights_only=True)["meta"])
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(_with_meta(tmp_path, change(raw)))
    assert "\n" not in str(info.value)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "optimizer": {}, "meta": "{}", "code": Checkpoint}, path)  # pickles a class
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
