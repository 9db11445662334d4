"""``esper experiment``: the arms of a config over several random seeds, each a normal run on the bus.

Run ids are ``EXPERIMENT-ARM-sSEED`` (so a controller, or a test, can address an arm before it
starts); every arm's session events carry the experiment id and arm (TrainingSessionEvent v3),
which is what Nissa's ``experiment_runs`` and ``experiments`` views group by. What each arm
trains is planned in ``experiment_plan``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.core.progress import progress_bar
from services.tolaria.config import ModelConfig, RunConfig
from services.tolaria.data import load_dataset
from services.tolaria.experiment_plan import Fossil, Grown, arm_config, ordered_arms
from services.tolaria.models import build_host, parameter_count
from services.tolaria.run import RunResult, start_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmResult:
    arm: str
    seed: int
    run: RunResult
    wall_s: float


def new_experiment_id(name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', name)[:36]}-{stamp}"


def arm_run_id(experiment_id: str, arm: str, seed: int) -> str:
    return f"{experiment_id}-{arm}-s{seed}"


def _host_counter(cfg: RunConfig) -> Callable[[ModelConfig], int]:
    """Parameters of a host built from a ModelConfig on this config's data (shapes only; loaded once)."""
    data = load_dataset(cfg.data, cfg.seed, image=cfg.model.kind == "cnn")
    return lambda model: parameter_count(build_host(model, data.sample_shape, data.num_classes))


def run_experiment(cfg: RunConfig, settings, seeds: Sequence[int], arms: Sequence[str], experiment_id: str, *,
                   progress: bool = True, on_arm: Callable[[ArmResult], None] | None = None) -> list[ArmResult]:
    """Every arm for every seed, seed by seed (adaptive first: the static arms are sized from it)."""
    order = ordered_arms(arms)
    if "gromo" in order:  # before the first arm, not after an hour of them
        from services.peers.gromo_arm import require_gromo
        require_gromo()
    results: list[ArmResult] = []
    with progress_bar(f"experiment {experiment_id}", len(seeds) * len(order), progress) as advance:
        for seed in seeds:
            grown: Grown | None = None
            for arm in order:
                arm_cfg = arm_config(cfg, experiment_id, arm, seed, grown,
                                     _host_counter(cfg) if arm == "static_width" else None)
                started = time.monotonic()
                result = start_run(arm_cfg, settings, run_id=arm_run_id(experiment_id, arm, seed),
                                   no_adapt=arm != "adaptive", progress=False)
                done = ArmResult(arm, seed, result, time.monotonic() - started)
                if arm == "adaptive":
                    grown = Grown(result.parameter_count, tuple(Fossil(layer, a) for layer, a in result.fossils))
                log.info("experiment arm done experiment=%s arm=%s seed=%d run_id=%s val_acc=%.4f params=%d",
                         experiment_id, arm, seed, result.run_id, result.validation_accuracy, result.parameter_count)
                results.append(done)
                if on_arm is not None:
                    on_arm(done)
                advance(1)
    return results
