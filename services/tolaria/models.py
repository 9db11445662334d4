"""Host models. Module paths (``body.0``, ``features.2``, ``head``) are what seed slots target."""

from __future__ import annotations

import math

from torch import nn

from services.tolaria.config import ModelConfig


def build_host(cfg: ModelConfig, sample_shape: list[int], num_classes: int) -> nn.Module:
    if cfg.kind == "mlp":
        return _MLP(math.prod(sample_shape), cfg.hidden, num_classes)
    if len(sample_shape) != 3:
        raise ValueError(f"a cnn needs image samples [C, H, W], got {sample_shape}")
    return _CNN(sample_shape, cfg.channels, num_classes)


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
