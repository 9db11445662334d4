"""The ``TrainingSessionEvent`` that announces a run's status: its model, its training and the state of every seed."""

from __future__ import annotations

from itertools import pairwise

import torch

from contracts import (
    LayerEdge,
    LayerSpec,
    ModelSpec,
    Seed,
    SessionStatus,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.tolaria.config import RunConfig
from services.tolaria.training_setup import TrainingSetup


def session_event(run_id: str, cfg: RunConfig, setup: TrainingSetup, adapt: bool, status: SessionStatus, *,
                  error: str | None = None, final_val: float | None = None, final_test: float | None = None
                  ) -> TrainingSessionEvent:
    manager = setup.manager
    seeds = [
        Seed(layer_id=s.layer_id, seed_idx=s.seed_idx, layer_name=manager.slot(s).layer_name,
             state=manager.state(s),
             blueprint_id=(manager.kernel_info[s].blueprint_id if s in manager.kernel_info else None))
        for s in manager.seed_ids()
    ]
    # The host models are sequential, so data flows through the seeded layers in module order.
    layers = [
        LayerSpec(name=slot.layer_name, layer_id=slot.layer_id,
                  kind="conv2d" if isinstance(slot.host, torch.nn.Conv2d) else "linear",
                  input_shape=slot.input_shape or [], output_shape=slot.output_shape or [],
                  parameters=sum(p.numel() for p in slot.host.parameters()))
        for slot in setup.slots.values()
    ]
    session = TrainingSession(
        session_id=run_id, name=cfg.name, description=cfg.description,
        training_model_config=ModelSpec(
            architecture=cfg.model.kind, input_shape=setup.data.sample_shape, num_classes=setup.data.num_classes,
            hidden_sizes=cfg.model.hidden if cfg.model.kind == "mlp" else cfg.model.channels,
            target_layers=cfg.seeds.target_layers, seeds_per_layer=cfg.seeds.per_layer,
            parameter_count=setup.host_parameters, layers=layers,
            topology=[LayerEdge(source=a.name, target=b.name) for a, b in pairwise(layers)],
        ),
        training_config=TrainingSpec(
            dataset=cfg.data.dataset, epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.optimizer.lr,
            optimizer=cfg.optimizer.name, random_seed=cfg.seed, device=str(setup.device),
            adaptation_enabled=adapt, adaptation_budget=cfg.adaptation.budget,
            cooldown_epochs=cfg.adaptation.cooldown_epochs, auto_advance=cfg.adaptation.auto_advance,
        ),
        seeds=seeds, status=status,
    )
    tag, fork = cfg.experiment, cfg.fork
    return TrainingSessionEvent(session=session, error=error, final_validation_accuracy=final_val,
                                final_test_accuracy=final_test, experiment_id=tag.id if tag else None,
                                experiment_arm=tag.arm if tag else None,
                                parent_run_id=fork.parent_run_id if fork else None,
                                fork_epoch=fork.epoch if fork else None,
                                parent_log_position=dict(fork.parent_log_position) if fork else {},
                                policy_version=cfg.policy_version,
                                controller=None if cfg.controller == "policy" else cfg.controller,
                                exploration=cfg.exploration)
