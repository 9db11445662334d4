"""GradMax-style vs random fan-in for a width seed, measured (no broker): ``python examples/gradmax_vs_random.py [N]``.

Per random seed 0..N-1 (default 10): an 8-unit MLP trains 10 epochs on three spirals, a width seed adds 16
units to ``body.0`` (random fan-in as compiled, or the GradMax-style one), Kasmina's lifecycle runs 30 more
epochs (gate threshold -1, so both arms fossilize). Prints the fan-out gradient norm at germination (the
seed forced in at alpha 1, the whole training split) and the final validation accuracy of both arms.
"""

from __future__ import annotations

import statistics
import sys

import torch
from torch.nn import functional as F

from contracts import SeedId
from services.blueprints.modules import build_module
from services.blueprints.starter import width_units
from services.kasmina.growth import WidthSeed
from services.kasmina.seed_manager import KernelInfo
from services.tolaria.config import parse_config
from services.tolaria.training_setup import build_training

CONFIG = {"epochs": 40, "batch_size": 32, "device": "cpu", "data": {"dataset": "spirals", "spiral_points": 300},
          "model": {"kind": "mlp", "hidden": [8]}, "seeds": {"target_layers": ["body.0"], "per_layer": 1},
          "optimizer": {"lr": 0.01}, "adaptation": {"training_epochs": 2, "grafting_steps": 30, "min_contribution": -1}}


def grow(seed: int, gradmax: bool, units: int = 16, before: int = 10, after: int = 30) -> tuple[float, float]:
    setup = build_training(parse_config({**CONFIG, "seed": seed}), adapt=True)
    trainer, manager, slot = setup.trainer, setup.manager, setup.slots["body.0"]
    for epoch in range(before):
        trainer.train_epoch(epoch)
    torch.manual_seed(1000 + seed)
    bp = width_units(slot.input_shape or [], slot.output_shape or [], units)
    sid = SeedId(layer_id=slot.layer_id, seed_idx=0)
    manager.germinate(sid, build_module(bp.architecture), KernelInfo("k", bp.blueprint_id, bp.architecture), before,
                      trainer.val_accuracy(), gradient_probe=trainer.gradient_probe_loss if gradmax else None)
    trainer.rebuild_optimizer()
    kernel = slot.kernel(0)
    assert isinstance(kernel, WidthSeed)
    with manager.probe_training():
        loss = F.cross_entropy(setup.model(trainer.train_split.x), trainer.train_split.y)
    (gradient,) = torch.autograd.grad(loss, kernel.fan_out)
    for epoch in range(before, before + after):
        trainer.train_epoch(epoch)
        if manager.end_of_epoch(epoch, trainer.val_evaluation, trainer.val_evaluation())[0]:
            trainer.rebuild_optimizer()
    return float(gradient.norm()), trainer.val_accuracy()


def main(seeds: int) -> None:
    ratios: list[float] = []
    accuracy: dict[str, list[float]] = {"random": [], "gradmax": []}
    for seed in range(seeds):
        (g0, a0), (g1, a1) = grow(seed, False), grow(seed, True)
        ratios.append(g1 / g0)
        accuracy["random"].append(a0)
        accuracy["gradmax"].append(a1)
        print(f"seed {seed}: fan-out gradient random {g0:.4f} gradmax {g1:.4f} (x{g1 / g0:.2f}); "
              f"val accuracy random {a0:.3f} gradmax {a1:.3f}", flush=True)
    print(f"mean gradient ratio x{statistics.mean(ratios):.2f} (higher in {sum(r > 1 for r in ratios)}/{seeds}); "
          f"mean val accuracy random {statistics.mean(accuracy['random']):.3f} "
          f"gradmax {statistics.mean(accuracy['gradmax']):.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
