"""Blueprint architecture -> torch module, for the whitelisted ops only.

Shapes exclude the batch dimension: ``[features]`` for vector slots (Linear),
``[channels, height, width]`` for feature-map slots (Conv2d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contracts import BlueprintArchitecture, BlueprintOp, OpSpec


class BlueprintError(ValueError):
    """A blueprint that cannot be built for the slot it targets."""


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


def _spatial_stride(in_shape: list[int], out_shape: list[int]) -> int:
    if len(in_shape) != 3 or len(out_shape) != 3 or out_shape[1] >= in_shape[1]:
        return 1
    return max(1, math.ceil(in_shape[1] / out_shape[1]))


def _build_op(op: OpSpec, shape: list[int], target: list[int], first_conv: bool) -> tuple[nn.Module, list[int]]:
    kind = op.op
    if kind == BlueprintOp.LINEAR:
        if len(shape) != 1:
            raise BlueprintError(f"linear needs a vector input, got shape {shape}")
        width = op.width or target[0]
        return nn.Linear(shape[0], width), [width]
    if kind == BlueprintOp.CONV2D:
        if len(shape) != 3:
            raise BlueprintError(f"conv2d needs a [C, H, W] input, got shape {shape}")
        width, k = op.width or target[0], op.kernel_size or 3
        stride = _spatial_stride(shape, target) if first_conv else 1
        conv = nn.Conv2d(shape[0], width, k, stride=stride, padding=k // 2)
        h = (shape[1] + 2 * (k // 2) - k) // stride + 1
        w = (shape[2] + 2 * (k // 2) - k) // stride + 1
        return conv, [width, h, w]
    if kind == BlueprintOp.LAYER_NORM:
        return (nn.LayerNorm(shape[0]) if len(shape) == 1 else nn.GroupNorm(1, shape[0])), shape
    if kind == BlueprintOp.BATCH_NORM:
        return (nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0])), shape
    if kind == BlueprintOp.RELU:
        return nn.ReLU(), shape
    if kind == BlueprintOp.GELU:
        return nn.GELU(), shape
    if kind == BlueprintOp.TANH:
        return nn.Tanh(), shape
    if kind == BlueprintOp.BOTTLENECK:
        return _Bottleneck(shape, op.width or max(1, shape[0] // 4)), shape
    if kind == BlueprintOp.ATTENTION_LITE:
        return _AttentionLite(shape, op.heads or 1), shape
    raise BlueprintError(f"op {kind!r} is not in the whitelist")  # pragma: no cover - enum is closed


def build_module(arch: BlueprintArchitecture) -> nn.Module:
    """Build the kernel module of ``arch``; raises BlueprintError when shapes do not work out."""
    shape = list(arch.input_shape)
    target = list(arch.output_shape)
    layers: list[nn.Module] = []
    first_conv = True
    for i, op in enumerate(arch.layers):
        if op.op == BlueprintOp.RESIDUAL:
            if shape != list(arch.input_shape):
                raise BlueprintError(f"residual at op {i}: shape {shape} differs from the input {arch.input_shape}")
            layers = [_Residual(nn.Sequential(*layers))]
            continue
        module, shape = _build_op(op, shape, target, first_conv)
        if op.op == BlueprintOp.CONV2D:
            first_conv = False
        layers.append(module)
    if shape != target:
        raise BlueprintError(f"blueprint produces shape {shape}, the slot needs {target}")
    return nn.Sequential(*layers)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
