"""The capacity signal (services/kasmina/capacity.py) against brute-force autograd, and what it tells apart."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from services.kasmina.capacity import ROWS, capacity_gain
from services.kasmina.seed_manager import LifecycleSettings, SeedManager
from services.kasmina.wrap import wrap_layers
from services.tolaria.data import _digits


def _mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 2):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1]))


def _new_units_gradient(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, fan_in: torch.Tensor) -> torch.Tensor:
    """dL/dW_out for new units of layer 0 with fan-in ``fan_in`` (k x in), identity activation (the
    linearisation) and a zero fan-out W_out (out x k) into layer 2: the function is unchanged."""
    first, consumer = model[0], model[2]
    fan_out = torch.zeros(consumer.out_features, fan_in.shape[0], requires_grad=True)
    hidden = F.relu(first(x))
    z = consumer(hidden) + (x @ fan_in.T) @ fan_out.T
    rest = z
    for module in list(model)[3:]:
        rest = module(rest)
    (grad,) = torch.autograd.grad(F.cross_entropy(rest, y), fan_out)
    return grad


def _train_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> SeedManager:
    slots = wrap_layers(model, ["0"], 1, sample_every=1)
    for xb, yb in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
    return SeedManager(slots, LifecycleSettings(), model)


def test_the_accumulated_matrix_is_the_gradient_of_new_units_fan_out_and_its_top_singular_value_the_best_unit():
    gen = torch.Generator().manual_seed(1)
    plain = _mlp([5, 7, 6, 3])
    batches = [(torch.randn(ROWS, 5, generator=gen), torch.randint(0, 3, (ROWS,), generator=gen)) for _ in range(3)]
    wrapped = copy.deepcopy(plain)
    manager = _train_steps(wrapped, batches)
    m = manager.slots["0"].capacity.matrix()
    assert m is not None and m.shape == (6, 5)
    # Fan-in = identity: the new units' outputs are the layer's inputs, so dL/dW_out is M itself (mean over steps).
    brute = torch.stack([_new_units_gradient(plain, xb, yb, torch.eye(5)) for xb, yb in batches]).mean(0)
    torch.testing.assert_close(m, brute, rtol=1e-5, atol=1e-7)
    # The best unit-norm fan-in (top right singular vector) reaches capacity_gain; random ones stay below.
    gain = capacity_gain(m)
    assert gain > 0
    top = torch.linalg.svd(m.double()).Vh[0].float().unsqueeze(0)
    best = torch.stack([_new_units_gradient(plain, xb, yb, top) for xb, yb in batches]).mean(0)
    assert float(best.norm()) == pytest.approx(gain, rel=1e-4)
    for _ in range(20):
        w = torch.randn(1, 5, generator=gen)
        w = w / w.norm()
        g = torch.stack([_new_units_gradient(plain, xb, yb, w) for xb, yb in batches]).mean(0)
        assert float(g.norm()) <= gain * (1 + 1e-5)
    # k units with orthonormal fan-ins: sqrt of the sum of the k largest squared singular values.
    two = torch.linalg.svd(m.double()).Vh[:2].float()
    g2 = torch.stack([_new_units_gradient(plain, xb, yb, two) for xb, yb in batches]).mean(0)
    assert float(g2.norm()) == pytest.approx(capacity_gain(m, units=2), rel=1e-4)


def test_a_batch_larger_than_the_sampled_rows_is_estimated_from_its_first_rows_scaled_up():
    gen = torch.Generator().manual_seed(2)
    plain = _mlp([4, 6, 3])
    x, y = torch.randn(3 * ROWS, 4, generator=gen), torch.randint(0, 3, (3 * ROWS,), generator=gen)
    wrapped = copy.deepcopy(plain)
    manager = _train_steps(wrapped, [(x, y)])
    m = manager.slots["0"].capacity.matrix()
    # The mean loss over 3*ROWS rows, restricted to the first ROWS, times 3: the first ROWS rows' mean-loss gradient.
    brute = _new_units_gradient(plain, x[:ROWS], y[:ROWS], torch.eye(4))
    torch.testing.assert_close(m, brute, rtol=1e-5, atol=1e-7)


def test_conv_layers_use_one_by_one_new_channels_over_every_position():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 5, 5, generator=gen), torch.randint(0, 2, (6,), generator=gen)
    wrapped = copy.deepcopy(plain)
    manager = _train_steps(wrapped, [(x, y)])
    m = manager.slots["0"].capacity.matrix()
    fan_out = torch.zeros(5, 3, 1, 1, requires_grad=True)  # 1x1 fan-out of 3 new channels whose fan-in is identity
    z = plain[2](F.relu(plain[0](x))) + F.conv2d(x, fan_out)
    out = z
    for module in list(plain)[3:]:
        out = module(out)
    (brute,) = torch.autograd.grad(F.cross_entropy(out, y), fan_out)
    torch.testing.assert_close(m, brute.reshape(5, 3), rtol=1e-5, atol=1e-7)


def test_health_signals_carry_the_layer_signal_and_the_output_layer_has_none():
    model = _mlp([4, 8, 8, 3])
    slots = wrap_layers(model, ["0", "2", "4"], 2, sample_every=2)
    manager = SeedManager(slots, LifecycleSettings(), model)
    gen = torch.Generator().manual_seed(4)
    for _ in range(4):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(torch.randn(16, 4, generator=gen)), torch.randint(0, 3, (16,), generator=gen)).backward()
    with torch.no_grad():  # evaluation passes do not feed the signal
        model.eval()
        model(torch.randn(16, 4))
    signals = manager.health_signals(0)
    by_layer = {s.layer_name: {t.capacity_gain for t in signals if t.layer_name == s.layer_name} for s in signals}
    assert len(by_layer["0"]) == len(by_layer["2"]) == 1  # every seed of a layer carries the layer's value
    assert by_layer["0"].pop() > 0 and by_layer["2"].pop() > 0
    assert by_layer["4"] == {0.0}
    assert all(s.capacity_gain == 0.0 for s in manager.health_signals(1))  # reset after each summary


def _final_signal(width: int, seed: int, epochs: int = 20) -> tuple[float, float]:
    """Train a 64-width-10 MLP on 600 of scikit-learn's digits; (capacity_gain of the hidden layer at the last
    epoch, training accuracy)."""
    x_np, y_np, _ = _digits()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(y_np), generator=gen)[:600]
    x, y = torch.tensor(x_np)[pick], torch.tensor(y_np)[pick]
    model = _mlp([64, width, 10], seed)
    slots = wrap_layers(model, ["0"], 1, sample_every=1)
    manager = SeedManager(slots, LifecycleSettings(), model)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    signal = 0.0
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = order[start:start + 64]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        signal = manager.health_signals(epoch)[0].capacity_gain
    with torch.no_grad():
        accuracy = float((model.eval()(x).argmax(1) == y).float().mean())
    return signal, accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_under_capacity_host_reads_markedly_higher_than_one_that_fits(seed):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small, small_acc = _final_signal(4, seed)
        large, large_acc = _final_signal(64, seed)
    finally:
        torch.set_num_threads(threads)
    assert small_acc < 0.9 < 0.99 < large_acc  # the premise: one lacks units, the other fits its data
    assert small > 4 * large  # measured: 8x, 22x, 17x (seeds 0, 1, 2)
