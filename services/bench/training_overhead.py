"""Cost of dormant seed slots plus health telemetry on a training step, beside the unwrapped model.

The wrapped model is built around the unwrapped model's own layers, so both step the very same
parameter tensors (each with its own Adam): the difference is the slots' forward path and the
telemetry, not where the allocator put two copies of the weights. With a deep copy instead, two
identical models differed by up to +/-17 % per process on this machine (an A/A test: the layout
of the weights in memory, not the code), more than the 3 % the figure is held to. Steps are timed
in interleaved blocks (ABBA) so that noise from the shared machine hits both sides alike; the
median ratio is reported. With ``--profile`` only the wrapped model's blocks are profiled.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from services.bench.profiling import own_path
from services.bench.results import BenchResult
from services.kasmina.seed_manager import LifecycleSettings, SeedManager
from services.kasmina.wrap import wrap_layers

BLOCKS = 20
STEPS_PER_BLOCK = 12  # a multiple of the telemetry's default sampling (every 4th step): every block holds 3 sampled
REPEATS = 5
LABEL_SETS = 64


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def bench_training_overhead(sample_every: int = 4) -> BenchResult:
    plain = _model()
    wrapped = nn.Sequential(*plain)  # the same layers (and parameters); wrapping replaces them in this one only
    slots = wrap_layers(wrapped, ["0", "2", "4"], seeds_per_layer=4, sample_every=sample_every)
    manager = SeedManager(slots, LifecycleSettings(), wrapped)
    plain_params, wrapped_params = list(plain.parameters()), list(wrapped.parameters())
    x = torch.randn(128, 784)
    # Fresh labels for the one input batch on every step: it cannot be fitted, so the gradients keep the size they
    # have while a model learns. Trained on one fixed batch, the model memorised it (loss 0.0, weight gradients
    # ~1e-16 after the run's 4,000 steps), and squaring such gradients (the telemetry's norms) gave subnormals.
    labels = torch.randint(0, 10, (LABEL_SETS, 128))
    opt_plain = torch.optim.Adam(plain.parameters(), 1e-3)
    opt_wrapped = torch.optim.Adam(wrapped.parameters(), 1e-3)

    plain_steps = wrapped_steps = 0  # counted over the whole run, as the slots count their forwards

    def step_plain() -> None:
        nonlocal plain_steps
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), labels[plain_steps % LABEL_SETS]).backward()
        plain_steps += 1
        opt_plain.step()

    def step_wrapped() -> None:
        nonlocal wrapped_steps
        opt_wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), labels[wrapped_steps % LABEL_SETS]).backward()
        if wrapped_steps % sample_every == 0:  # the steps whose forward the slots sampled
            manager.observe_gradients()
        wrapped_steps += 1
        opt_wrapped.step()
        manager.after_optimizer_step()

    def block(step) -> float:
        start = time.perf_counter()
        for _ in range(STEPS_PER_BLOCK):
            step()
        return (time.perf_counter() - start) / STEPS_PER_BLOCK * 1000

    def block_wrapped() -> float:
        with own_path():  # the wrapped model's steps are the figure's own path; the plain ones are its baseline
            return block(step_wrapped)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: far less noise on a shared 2-core machine
    # Subnormal floats flushed to zero on both sides: which of them a run meets depends on its trajectory (Adam's
    # moments of units that stopped getting gradient decay through them), and on this CPU they cost ~5x a normal
    # float; unflushed, two processes of the same code differed by more than the 3 % this figure is held to.
    torch.set_flush_denormal(True)
    try:
        block(step_plain), block(step_wrapped)  # warm-up
        times_plain, times_wrapped, ratios = [], [], []
        for i in range(BLOCKS * REPEATS):  # ABBA order, so drifts in machine load cancel out
            if i % 2 == 0:
                p = block(step_plain)
                w = block_wrapped()
            else:
                w = block_wrapped()
                p = block(step_plain)
            times_plain.append(p)
            times_wrapped.append(w)
            ratios.append(w / p)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch's default (it has no getter to restore from)
    signals = manager.health_signals(0)
    plain_ms = statistics.median(times_plain)
    return BenchResult(
        "training step with dormant seeds + telemetry", "ms/step", plain_ms * statistics.median(ratios),
        "unwrapped model", plain_ms, higher_is_better=False, max_overhead=0.03,
        details={"seeds": 12, "health_signals_per_epoch": len(signals), "sample_every_steps": sample_every,
                 "model": "MLP 784-512-512-10, batch 128, CPU, one thread, subnormals flushed",
                 # dormant seeds own no parameters: the optimizer steps the same tensors on both sides
                 "parameters_unwrapped": sum(p.numel() for p in plain_params),
                 "parameters_wrapped": sum(p.numel() for p in wrapped_params),
                 "same_parameter_tensors": [id(p) for p in plain_params] == [id(p) for p in wrapped_params]},
    )
