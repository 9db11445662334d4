"""Host models. Module paths (``body.0``, ``features.2``, ``head``) are what seed slots target."""

from __future__ import annotations

import math

import torch
from torch import nn

from services.blueprints.ir_checks import BlueprintError
from services.blueprints.modules import build_module
from services.tolaria.config import BranchConfig, ModelConfig


def build_host(cfg: ModelConfig, sample_shape: list[int], num_classes: int) -> nn.Module:
    """The host network; ``ValueError`` (one line) for a shape or a branch that does not fit."""
    if cfg.kind == "mlp":
        model: nn.Module = _MLP(math.prod(sample_shape), cfg.hidden, num_classes)
    else:
        if len(sample_shape) != 3:
            raise ValueError(f"a cnn needs image samples [C, H, W], got {sample_shape}")
        model = _CNN(sample_shape, cfg.channels, num_classes)
    _add_branches(model, cfg.branches)
    return model


class Branched(nn.Module):
    """A host layer with static side branches: ``host(x) + sum(branch(x))`` (a fossil's function, no lifecycle)."""

    def __init__(self, host: nn.Module, branches: list[nn.Module]) -> None:
        super().__init__()
        self.host = host
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.host(x)
        for branch in self.branches:
            y = y + branch(x)
        return y


def _add_branches(model: nn.Module, branches: list[BranchConfig]) -> None:
    by_layer: dict[str, list[BranchConfig]] = {}
    for b in branches:
        by_layer.setdefault(b.layer, []).append(b)
    for path, wanted in by_layer.items():
        parent_path, _, name = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            host = parent.get_submodule(name)
        except AttributeError:
            raise ValueError(f"branch layer {path!r} is not a module of the host") from None
        if not isinstance(host, nn.Linear | nn.Conv2d):
            raise ValueError(f"branch layer {path!r} is a {type(host).__name__}, not a Linear or Conv2d")
        built = []
        for b in wanted:
            try:
                built.append(build_module(b.architecture))
            except BlueprintError as exc:
                raise ValueError(f"branch on {path!r}: {exc}") from None
        setattr(parent, name, Branched(host, built))


class _MLP(nn.Module):
    def __init__(self, features: int, hidden: list[int], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


class _CNN(nn.Module):
    def __init__(self, shape: list[int], channels: list[int], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = shape[0]
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU()]
            width = c
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * 4, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
