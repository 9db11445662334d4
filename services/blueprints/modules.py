"""Blueprint architecture -> torch module, for the whitelisted ops only.

Shapes exclude the batch dimension: ``[features]`` for vector slots (Linear),
``[channels, height, width]`` for feature-map slots (Conv2d).
"""

from __future__ import annotations

import torch
from torch import nn

from contracts import BlueprintArchitecture, BlueprintOp
from contracts.blueprint_ir import DEPTH, OpPlan
from services.blueprints.ir_checks import BlueprintError, check_buildable

__all__ = ["BlueprintError", "build_module", "check_buildable", "parameter_count"]


class _Residual(nn.Module):
    """Adds the block's input to what the ops before it produced."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Bottleneck(nn.Module):
    """x + up(relu(down(x))): a shape-preserving adapter of inner width ``width``."""

    def __init__(self, shape: list[int], width: int) -> None:
        super().__init__()
        self.down: nn.Module
        self.up: nn.Module
        if len(shape) == 1:
            self.down, self.up = nn.Linear(shape[0], width), nn.Linear(width, shape[0])
        else:
            self.down, self.up = nn.Conv2d(shape[0], width, 1), nn.Conv2d(width, shape[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class _AttentionLite(nn.Module):
    """Multi-head self-attention over spatial positions (maps) or feature groups (vectors)."""

    def __init__(self, shape: list[int], heads: int) -> None:
        super().__init__()
        self.vector = len(shape) == 1
        if self.vector:
            if shape[0] % heads:
                raise BlueprintError(f"attention_lite: {shape[0]} features do not split into {heads} tokens")
            self.tokens, dim = heads, shape[0] // heads
            self.attn = nn.MultiheadAttention(dim, 1, batch_first=True)
        else:
            channels = shape[0]
            if channels % heads:
                raise BlueprintError(f"attention_lite: {channels} channels do not split into {heads} heads")
            self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vector:
            tokens = x.reshape(x.shape[0], self.tokens, -1)
            out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
            return x + out.reshape(x.shape)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _build_op(step: OpPlan) -> nn.Module:
    kind, shape = step.op, list(step.in_shape)
    if kind == BlueprintOp.LINEAR:
        return nn.Linear(shape[0], step.width)
    if kind == BlueprintOp.CONV2D:
        return nn.Conv2d(shape[0], step.width, step.kernel_size, stride=step.stride, padding=step.kernel_size // 2)
    if kind == BlueprintOp.LAYER_NORM:
        return nn.LayerNorm(shape[0]) if len(shape) == 1 else nn.GroupNorm(1, shape[0])
    if kind == BlueprintOp.BATCH_NORM:
        return nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0])
    if kind == BlueprintOp.RELU:
        return nn.ReLU()
    if kind == BlueprintOp.GELU:
        return nn.GELU()
    if kind == BlueprintOp.TANH:
        return nn.Tanh()
    if kind == BlueprintOp.BOTTLENECK:
        return _Bottleneck(shape, step.width)
    if kind == BlueprintOp.ATTENTION_LITE:
        return _AttentionLite(shape, step.heads)
    raise BlueprintError(f"op {kind!r} is not in the whitelist")  # pragma: no cover - enum is closed


def build_module(arch: BlueprintArchitecture) -> nn.Module:
    """Build the kernel module of ``arch``; raises BlueprintError (before allocating) when it cannot.

    A depth block's last op is built zero: the block adds nothing, so inserting it is the identity.
    """
    layers: list[nn.Module] = []
    for step in check_buildable(arch).steps:
        if step.op == BlueprintOp.RESIDUAL:
            layers = [_Residual(nn.Sequential(*layers))]
        else:
            layers.append(_build_op(step))
    if arch.kind == DEPTH:
        with torch.no_grad():
            for p in layers[-1].parameters():
                p.zero_()
    return nn.Sequential(*layers)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
