"""Host models. Module paths (``body.0``, ``features.2``, ``head``) are what seed slots target."""

from __future__ import annotations

import math

import torch
from torch import nn

from contracts import BlueprintArchitecture
from services.blueprints.ir_checks import BlueprintError
from services.blueprints.modules import build_module
from services.tolaria.config import BlockConfig, BranchConfig, ModelConfig


def build_host(cfg: ModelConfig, sample_shape: list[int], num_classes: int) -> nn.Module:
    """The host network; ``ValueError`` (one line) for a shape or a branch that does not fit."""
    if cfg.kind == "mlp":
        model: nn.Module = _MLP(math.prod(sample_shape), cfg.hidden, num_classes)
    else:
        if len(sample_shape) != 3:
            raise ValueError(f"a cnn needs image samples [C, H, W], got {sample_shape}")
        model = _CNN(sample_shape, cfg.channels, num_classes)
    _add_static(model, cfg.branches, cfg.blocks)
    return model


class Branched(nn.Module):
    """A host layer with static side branches and residual blocks (fossils' functions, no lifecycle):
    ``y = host(x) + sum(branch(x))``, then ``y = y + block(y)`` per block, the seed slot's order."""

    def __init__(self, host: nn.Module, branches: list[nn.Module], blocks: list[nn.Module]) -> None:
        super().__init__()
        self.host = host
        self.branches = nn.ModuleList(branches)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.host(x)
        for branch in self.branches:
            y = y + branch(x)
        for block in self.blocks:
            y = y + block(y)
        return y


def _add_static(model: nn.Module, branches: list[BranchConfig], blocks: list[BlockConfig]) -> None:
    by_layer: dict[str, tuple[list[BranchConfig], list[BlockConfig]]] = {}
    for b in branches:
        by_layer.setdefault(b.layer, ([], []))[0].append(b)
    for k in blocks:
        by_layer.setdefault(k.layer, ([], []))[1].append(k)
    for path, (side, after) in by_layer.items():
        parent_path, _, name = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            host = parent.get_submodule(name)
        except AttributeError:
            raise ValueError(f"branch or block layer {path!r} is not a module of the host") from None
        if not isinstance(host, nn.Linear | nn.Conv2d):
            raise ValueError(f"branch or block layer {path!r} is a {type(host).__name__}, not a Linear or Conv2d")
        setattr(parent, name, Branched(host, [_built(path, b.architecture) for b in side],
                                       [_built(path, k.architecture) for k in after]))


def _built(path: str, arch: BlueprintArchitecture) -> nn.Module:
    try:
        return build_module(arch)
    except BlueprintError as exc:
        raise ValueError(f"branch or block on {path!r}: {exc}") from None


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
