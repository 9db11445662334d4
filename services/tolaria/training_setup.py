"""What a run trains, built from its configuration (no Kafka): data, host model, seed slots, lifecycle, trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from services.blueprints.modules import build_module
from services.kasmina.seed_manager import LifecycleSettings, SeedManager
from services.kasmina.seed_slot import KasminaError, SeedSlot
from services.kasmina.wrap import wrap_layers
from services.tolaria.checkpoint import Checkpoint
from services.tolaria.commands import AdaptationBudget
from services.tolaria.config import ConfigError, PeerGrowthConfig, RunConfig
from services.tolaria.data import DataError, Dataset, load_dataset
from services.tolaria.models import build_host, parameter_count
from services.tolaria.trainer import Trainer, pick_device


class PeerGrower(Protocol):
    def before_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> int:
        """Grow the model at the start of ``epoch``; the parameters added (0: the model is unchanged)."""


@dataclass(frozen=True)
class TrainingSetup:
    device: torch.device
    data: Dataset
    model: nn.Module
    host_parameters: int  # before any seed grows
    slots: dict[str, SeedSlot]
    manager: SeedManager
    trainer: Trainer
    budget: AdaptationBudget
    grower: PeerGrower | None = None  # a peer's growth (the gromo arm): before each epoch, on the training split

    def slot_shapes(self) -> dict[str, tuple[list[int], list[int]]]:
        """Input and output shape of every seed slot."""
        return {name: (slot.input_shape or [], slot.output_shape or []) for name, slot in self.slots.items()}


def build_training(cfg: RunConfig, adapt: bool) -> TrainingSetup:
    """Seed torch, load the data, build and wrap the host; a configuration that cannot be built is a ConfigError."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    try:
        data = load_dataset(cfg.data, cfg.seed, image=cfg.model.kind == "cnn")
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    grower: PeerGrower | None = None
    try:
        if cfg.peer_growth is None:
            model = build_host(cfg.model, data.sample_shape, data.num_classes)
        else:
            model, grower = _peer_host(cfg, cfg.peer_growth, data, device)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    host_parameters = parameter_count(model)
    try:
        slots = wrap_layers(model, cfg.seeds.target_layers, cfg.seeds.per_layer, cfg.telemetry.sample_every_steps)
    except KasminaError as exc:
        raise ConfigError(f"seeds.target_layers: {exc}") from None
    a = cfg.adaptation
    manager = SeedManager(slots, LifecycleSettings(
        training_epochs=a.training_epochs, grafting_steps=a.grafting_steps, embargo_epochs=a.embargo_epochs,
        min_contribution=a.min_contribution, auto_advance=a.auto_advance,
    ), model)
    trainer = Trainer(model, manager, data, cfg, device)
    with torch.no_grad():  # record every slot's shapes (needed to check kernels) with one sample
        model.eval()
        model(data.train.x[:2].to(device))
        model.train()
    budget = AdaptationBudget(enabled=adapt, budget=a.budget, cooldown_epochs=a.cooldown_epochs)
    return TrainingSetup(device, data, model, host_parameters, slots, manager, trainer, budget, grower)


def _peer_host(cfg: RunConfig, peer: PeerGrowthConfig, data: Dataset, device: torch.device
               ) -> tuple[nn.Module, PeerGrower]:
    """The host as the peer package builds it, and its grower (imported here: only a peer arm needs the package)."""
    from services.peers.budget import plan_growth
    from services.peers.gromo_arm import GromoGrower, build_growing_mlp

    if cfg.model.kind != "mlp":
        raise ValueError(f"the {peer.package} arm grows MLP hosts, not a {cfg.model.kind}")
    model = build_growing_mlp(math.prod(data.sample_shape), cfg.model.hidden, data.num_classes, device)
    return model, GromoGrower(model, plan_growth(cfg.epochs, peer.target_parameters, peer.steps, peer.fraction),
                              peer.method)


def restore(setup: TrainingSetup, checkpoint: Checkpoint) -> None:
    """Put the checkpoint's kernels, weights, optimizer state and spent budget back into ``setup``."""
    meta = checkpoint.meta
    if setup.grower is not None:
        raise ConfigError(f"a {meta.config.peer_growth.package if meta.config.peer_growth else 'peer'} arm's run "
                          "cannot be resumed (its grown layers are the peer package's); run the arm again")
    setup.manager.restore_kernels(meta.kernels, build_module)
    setup.model.load_state_dict(checkpoint.model)
    setup.manager.after_load()
    setup.trainer.rebuild_optimizer()
    setup.trainer.optimizer.load_state_dict(checkpoint.optimizer)
    setup.budget.germinations = meta.budget.germinations
    setup.budget.last_germination_epoch = meta.budget.last_germination_epoch
    setup.budget.applied = list(meta.budget.applied)
