"""Health statistics of a seed slot, measured from real activations and gradients.

Accumulates on the device without synchronising (vector ops only) on sampled
training steps; ``summary()`` turns the sums into per-seed numbers once per epoch.
Seed ``i`` of a layer with N seeds watches the i-th chunk of its output units.

Per sampled step this is a handful of torch calls on small tensors, chosen by measurement
(``esper bench --only training``): a dead unit is one whose largest value never exceeded 0
(a running ``amax``, ~10x cheaper on CPU than counting the positive rows with a boolean sum,
which is all the count was used for), and a weight gradient's per-row squared norm is
``vector_norm(dim=1)**2`` (no (out x in) temporary; equal to the sum of squares up to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkHealth:
    activation_variance: float
    dead_neuron_ratio: float
    avg_correlation: float
    gradient_norm: float
    execution_latency_ms: float
    health_score: float


def health_score(variance: float, dead_ratio: float, correlation: float) -> float:
    """1 for a lively, diverse chunk; towards 0 when units die, collapse together or go flat.

    score = (1 - dead) * (1 - 0.5 * max(0, corr)) * (1 - exp(-100 * variance))
    """
    liveliness = 1.0 - math.exp(-100.0 * max(variance, 0.0))
    score = (1.0 - dead_ratio) * (1.0 - 0.5 * max(0.0, correlation)) * liveliness
    return min(1.0, max(0.0, score))


class HealthAccumulator:
    SAMPLE_ROWS = 64

    def __init__(self, num_seeds: int) -> None:
        self.num_seeds = num_seeds
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None
        self._sumsq: torch.Tensor | None = None
        self._peak: torch.Tensor | None = None  # each unit's largest value so far (NaN read as 0)
        self._grad_sq: torch.Tensor | None = None
        self._rows = 0
        self._grad_steps = 0
        self._sample: torch.Tensor | None = None
        self._latency_s = 0.0
        self._latency_n = 0

    def observe(self, output: torch.Tensor, seconds: float | None = None) -> None:
        """``output``: the host layer's output (B, C) or (B, C, H, W)."""
        units = output.detach()
        if units.dim() == 4:
            units = units.mean(dim=(2, 3))
        units = units.float()
        total, squares = units.sum(0), (units * units).sum(0)
        # > 0 iff some row is > 0 (NaN never is); no rows: nothing was > 0
        peak = torch.nan_to_num(units, nan=0.0).amax(0) if units.shape[0] else units.new_zeros(units.shape[1:])
        if self._sum is None or self._sumsq is None or self._peak is None:  # all three are set together
            self._sum, self._sumsq, self._peak = total, squares, peak
        else:
            self._sum.add_(total)
            self._sumsq.add_(squares)
            torch.maximum(self._peak, peak, out=self._peak)
        self._rows += units.shape[0]
        self._sample = units[: self.SAMPLE_ROWS]
        if seconds is not None:
            self._latency_s += seconds
            self._latency_n += 1

    def observe_gradient(self, weight_grad: torch.Tensor | None) -> None:
        """Squared norm of each output unit's weight-gradient row (Linear or Conv2d)."""
        if weight_grad is None:
            return
        rows = weight_grad.detach().reshape(weight_grad.shape[0], -1).float()
        sq = torch.linalg.vector_norm(rows, dim=1).square_()
        if self._grad_sq is None:
            self._grad_sq = sq
        else:
            self._grad_sq.add_(sq)
        self._grad_steps += 1

    def _chunks(self, units: int) -> list[slice]:
        bounds = [round(i * units / self.num_seeds) for i in range(self.num_seeds + 1)]
        return [slice(bounds[i], max(bounds[i + 1], bounds[i] + 1)) for i in range(self.num_seeds)]

    def summary(self) -> list[ChunkHealth] | None:
        """Per-seed health since the last summary, or None when nothing was observed."""
        if self._sum is None or self._sumsq is None or self._peak is None or self._rows == 0:
            return None
        n = float(self._rows)
        mean = (self._sum / n).cpu()
        var = (self._sumsq / n).cpu() - mean * mean
        dead_units = (self._peak <= 0).cpu()
        grad = self._grad_sq.cpu() / max(1, self._grad_steps) if self._grad_sq is not None else None
        sample = self._sample.cpu() if self._sample is not None else None
        latency_ms = 1000.0 * self._latency_s / self._latency_n if self._latency_n else 0.0
        out = []
        for chunk in self._chunks(mean.shape[0]):
            variance = float(var[chunk].clamp_min(0).mean())
            dead = float(dead_units[chunk].float().mean())
            corr = _mean_correlation(sample[:, chunk]) if sample is not None else 0.0
            gnorm = float(grad[chunk].sum().sqrt()) if grad is not None else 0.0
            out.append(ChunkHealth(variance, dead, corr, gnorm, latency_ms, health_score(variance, dead, corr)))
        return out


def _mean_correlation(sample: torch.Tensor) -> float:
    """Mean off-diagonal Pearson correlation between the units of a chunk (0 if undefined)."""
    if sample.shape[0] < 2 or sample.shape[1] < 2:
        return 0.0
    centred = sample - sample.mean(0, keepdim=True)
    std = centred.pow(2).mean(0).sqrt()
    alive = std > 1e-8
    if int(alive.sum()) < 2:
        return 0.0
    z = centred[:, alive] / std[alive]
    corr = (z.T @ z) / sample.shape[0]
    k = corr.shape[0]
    off = (corr.sum() - corr.diagonal().sum()) / (k * (k - 1))
    value = float(off)
    return 0.0 if math.isnan(value) else max(-1.0, min(1.0, value))
