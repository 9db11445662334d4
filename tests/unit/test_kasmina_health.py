"""Kasmina's health telemetry: the per-seed statistics against their definitions, the sampling schedule, and
the capacity probe that hooks the consumer only on sampled steps (the cheap path must measure the same)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from services.kasmina.health import HealthAccumulator, health_score
from services.kasmina.seed_manager import LifecycleSettings, SeedManager
from services.kasmina.wrap import wrap_layers


def _reference(batches: list[torch.Tensor], grads: list[torch.Tensor], seeds: int) -> list[dict[str, float]]:
    """The statistics by their definitions, over everything observed (units: the output columns, spatial mean
    for feature maps): variance over all rows, a unit is dead when no row was ever > 0, the gradient norm is
    sqrt of the chunk's mean (over steps) squared norm of its weight-gradient rows, the correlation is the last
    batch's."""
    rows = torch.cat([b.mean(dim=(2, 3)) if b.dim() == 4 else b for b in batches]).double()
    last = batches[-1].mean(dim=(2, 3)) if batches[-1].dim() == 4 else batches[-1]
    sq = torch.stack([g.reshape(g.shape[0], -1).double().pow(2).sum(1) for g in grads]).mean(0)
    units = rows.shape[1]
    bounds = [round(i * units / seeds) for i in range(seeds + 1)]
    out = []
    for i in range(seeds):
        chunk = slice(bounds[i], max(bounds[i + 1], bounds[i] + 1))
        x = rows[:, chunk]
        variance = float(((x * x).mean(0) - x.mean(0) ** 2).clamp_min(0).mean())
        dead = float((~(x > 0).any(0)).double().mean())
        z = last[:64, chunk].double()
        z = z[:, z.std(0) > 1e-8]  # a constant unit has no correlation
        z = (z - z.mean(0)) / z.std(0, unbiased=False)
        k = z.shape[1]
        corr = z.T @ z / z.shape[0]
        correlation = float((corr.sum() - corr.diagonal().sum()) / (k * (k - 1)))
        out.append({"activation_variance": variance, "dead_neuron_ratio": dead, "avg_correlation": correlation,
                    "gradient_norm": math.sqrt(float(sq[chunk].sum()))})
    return out


@pytest.mark.parametrize("shape", [(48, 12), (40, 12, 3, 3)])
def test_the_summary_is_the_statistics_of_every_observed_batch(shape):
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(*shape, generator=gen) for _ in range(3)]
    for b in batches:
        b[:, 0] = -b[:, 0].abs() - 0.1  # unit 0 is never > 0: dead
        b[:, 5] = 0.0  # exactly 0 is not > 0: dead
    batches[1][:, 7] = -1.0
    batches[1][0, 7] = 2.0  # unit 7 was > 0 in one row of one batch: alive
    grads = [torch.randn(12, 6, generator=gen) for _ in range(2)]
    acc = HealthAccumulator(3)
    for i, b in enumerate(batches):
        acc.observe(b, seconds=0.001 * (i + 1))
    for g in grads:
        acc.observe_gradient(g)
    acc.observe_gradient(None)  # no gradient (a frozen layer) is not a step
    got = acc.summary()
    assert got is not None and len(got) == 3
    for chunk, want in zip(got, _reference(batches, grads, 3), strict=True):
        for name, value in want.items():
            assert getattr(chunk, name) == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert chunk.execution_latency_ms == pytest.approx(2.0)
        assert chunk.health_score == health_score(chunk.activation_variance, chunk.dead_neuron_ratio,
                                                  chunk.avg_correlation)
    assert [c.dead_neuron_ratio for c in got] == [0.25, 0.25, 0.0]  # unit 0 of 0-3, unit 5 of 4-7
    acc.reset()
    assert acc.summary() is None


def test_a_unit_is_alive_once_any_row_was_positive_and_nan_never_is():
    acc = HealthAccumulator(4)
    nan = float("nan")
    acc.observe(torch.tensor([[nan, nan, -1.0, 0.0], [nan, 3.0, -2.0, 0.0]]))
    acc.observe(torch.tensor([[nan, -1.0, 1e-30, 0.0]]))
    acc.observe(torch.empty(0, 4))  # an empty batch adds nothing
    got = acc.summary()
    assert got is not None
    assert [c.dead_neuron_ratio for c in got] == [1.0, 0.0, 0.0, 1.0]


def _stack(sample_every: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    slots = wrap_layers(model, ["0", "2", "4"], 2, sample_every=sample_every)
    return model, slots, SeedManager(slots, LifecycleSettings(), model)


def test_the_first_and_every_nth_training_forward_is_sampled_and_other_passes_do_not_count():
    model, slots, manager = _stack(3)
    slot = slots["0"]
    sampled: list[int] = []
    forwards = [0]  # the training forwards so far
    original = slot.health.observe
    slot.health.observe = lambda y, seconds=None: (sampled.append(forwards[0]), original(y, seconds))  # type: ignore

    def train_forward() -> None:
        model(x)
        forwards[0] += 1

    x = torch.randn(4, 6)
    for _ in range(7):
        train_forward()
        model.eval()
        model(x)  # evaluation passes are not counted
        model.train()
        with manager.probe_training():
            model(x)  # nor is the isolated seed pass
    assert sampled == [0, 3, 6]
    slot.collect_health = False
    for _ in range(3):
        train_forward()  # counted, not sampled
    slot.collect_health = True
    for _ in range(3):
        train_forward()
    assert sampled == [0, 3, 6, 12]


def test_the_consumer_is_hooked_only_on_sampled_steps_and_the_dormant_model_is_the_host():
    model, slots, manager = _stack(2)
    host = [slots[p].host for p in ("0", "2", "4")]
    assert [id(p) for p in model.parameters()] == [id(p) for h in host for p in h.parameters()]
    assert not any(m._forward_hooks for m in model.modules())  # nothing hooked between steps
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        model.zero_grad(set_to_none=True)
        x = torch.randn(16, 6, generator=gen)
        y = F.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen))
        assert not any(m._forward_hooks for m in model.modules())  # a sampled step's hook removed itself
        y.backward()
        assert slots["0"].capacity._steps == step // 2 + 1  # steps 0, 2, 4 fed the signal
        assert slots["4"].capacity.matrix() is None  # the output layer has no consumer
    out = model(x)
    reference = host[2](torch.relu(host[1](torch.relu(host[0](x)))))
    assert torch.equal(out, reference)  # dormant seeds: exactly the host's computation
    assert [s.capacity_gain > 0 for s in manager.health_signals(0)] == [True] * 4 + [False] * 2
