"""The arms of an experiment, planned from a run config (pure: no Kafka, no training).

Per random seed, ``esper experiment`` runs up to four arms of one config, each a normal run:

* ``adaptive``: the config as it is (Tamiyo, or whoever commands the run, grows seeds);
* ``no_adapt``: the same config, seeds dormant (``esper run --no-adapt``);
* ``static_final``: the adaptive arm's final network trained from scratch. Its fossilized
  side-branch seeds become plain static branches (``model.branches``: ``y = layer(x) + branch(x)``,
  the fossil's function with alpha 1); its width fossils a wider host (the fossil merged its k
  units into the layer: hidden / channel width ``h -> h + k``); its depth fossils static residual
  blocks after their layer (``model.blocks``: ``y = y + block(y)``). All are freshly initialised
  from the arm's seed and trained with the host from epoch 0, with no seed slots and no lifecycle.
  Germinating the same kernels at epoch 0 instead would still run them through TRAINING in
  isolation, the GRAFTING alpha ramp, the counterfactual gate (which may cull them) and a frozen
  fossil: that is the adaptive arm with another schedule, not "the final architecture trained from scratch";
* ``static_width``: the host's family (same depth, no seed slots) with every width scaled up
  together until it has at least as many parameters as the adaptive arm's final network;
* ``gromo`` (opt-in): a peer. The MLP host, no seed slots, grown by the gromo package (TINY) up to
  the adaptive arm's final parameter count (``services/peers/``), on the same data, split and epochs.
The static arms and gromo need the adaptive arm of the same seed: they run after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contracts import BlueprintArchitecture
from contracts.blueprint_ir import DEPTH, WIDTH
from services.tolaria.config import (
    ARMS,
    BlockConfig,
    BranchConfig,
    ConfigError,
    ExperimentTag,
    ModelConfig,
    PeerGrowthConfig,
    RunConfig,
)

STATIC_ARMS = ("static_final", "static_width")
SIZED_ARMS = (*STATIC_ARMS, "gromo")  # sized from the adaptive arm of the same seed
MAX_WIDENING_STEPS = 4096


@dataclass(frozen=True)
class Fossil:
    """A fossilized seed of the adaptive arm: the host layer it sits on and its kernel's architecture."""

    layer: str
    architecture: BlueprintArchitecture


@dataclass(frozen=True)
class Grown:
    """What the adaptive arm of one seed ended with."""

    parameter_count: int
    fossils: tuple[Fossil, ...]


def ordered_arms(arms: Sequence[str]) -> list[str]:
    """The arms to run, in running order (adaptive first); a one-line ConfigError for a bad list."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(ARMS)}")
    if not arms:
        raise ConfigError(f"no arms given; arms: {', '.join(ARMS)}")
    if any(a in SIZED_ARMS for a in arms) and "adaptive" not in arms:
        raise ConfigError("static_final, static_width and gromo are sized from the adaptive arm: add the adaptive arm")
    return [a for a in ARMS if a in arms]


def arm_config(base: RunConfig, experiment_id: str, arm: str, seed: int, grown: Grown | None,
               count_parameters: Callable[[ModelConfig], int] | None = None) -> RunConfig:
    """The run config of ``arm`` for random ``seed``. Static arms need ``grown`` (the adaptive arm of the seed)
    and ``count_parameters`` (static_width: the parameters of a host built from a ModelConfig)."""
    cfg = base.model_copy(update={"seed": seed, "name": f"{base.name}-{arm}"[:100],
                                  "experiment": ExperimentTag(id=experiment_id, arm=arm)})  # type: ignore[arg-type]
    if arm in ("adaptive", "no_adapt"):
        return cfg
    if grown is None:
        raise ConfigError(f"arm {arm} needs the adaptive arm's result")
    if arm == "gromo":
        if base.model.kind != "mlp" or base.model.branches or base.model.blocks:
            raise ConfigError("the gromo arm grows plain MLP hosts (no static branches or blocks); "
                              f"this config's host is a {base.model.kind}")
        return cfg.model_copy(update={
            "seeds": base.seeds.model_copy(update={"target_layers": []}),
            "adaptation": base.adaptation.model_copy(update={"enabled": False}),
            "peer_growth": PeerGrowthConfig(target_parameters=grown.parameter_count)})
    if arm == "static_final":
        model = final_model(base.model, grown.fossils)
    else:
        if count_parameters is None:
            raise ConfigError("static_width needs a parameter counter")
        model = widened(base.model, grown.parameter_count, count_parameters)
    static = {"model": model, "seeds": base.seeds.model_copy(update={"target_layers": []}),
              "adaptation": base.adaptation.model_copy(update={"enabled": False})}
    return cfg.model_copy(update=static)


def final_model(model: ModelConfig, fossils: Sequence[Fossil]) -> ModelConfig:
    """The host with the fossils built in: side branches, widened layers, residual blocks."""
    key = "hidden" if model.kind == "mlp" else "channels"
    widths: list[int] = list(getattr(model, key))
    branches, blocks = list(model.branches), list(model.blocks)
    for f in fossils:
        if f.architecture.kind == WIDTH:
            widths[_width_index(model, f.layer)] += f.architecture.layers[0].width or 0
        elif f.architecture.kind == DEPTH:
            blocks.append(BlockConfig(layer=f.layer, architecture=f.architecture))
        else:
            branches.append(BranchConfig(layer=f.layer, architecture=f.architecture))
    return model.model_copy(update={key: widths, "branches": branches, "blocks": blocks})


def _width_index(model: ModelConfig, layer: str) -> int:
    """Which of the host's widths the layer at ``layer`` makes (``body.2`` is the mlp's second hidden layer)."""
    key, container = ("hidden", "body") if model.kind == "mlp" else ("channels", "features")
    prefix, _, index = layer.partition(".")
    count = len(getattr(model, key))
    if prefix != container or not index.isdigit() or int(index) % 2 or int(index) // 2 >= count:
        raise ConfigError(f"static_final: a width fossil on {layer!r} is not one of the host's {key} layers")
    return int(index) // 2


def scaled_widths(widths: list[int], first: int) -> list[int]:
    """``widths`` scaled so that the first becomes ``first`` (the others in proportion, rounded up)."""
    return [max(1, math.ceil(w * first / widths[0])) for w in widths]


def widened(model: ModelConfig, min_parameters: int, count_parameters: Callable[[ModelConfig], int]) -> ModelConfig:
    """The narrowest scaling of the host's widths (mlp hidden / cnn channels, all together) with at least
    ``min_parameters`` parameters; the host itself when it already has that many."""
    key = "hidden" if model.kind == "mlp" else "channels"
    widths: list[int] = list(getattr(model, key))
    if not widths:
        raise ConfigError(f"static_width: the host has no model.{key} to widen")
    for first in range(widths[0], widths[0] + MAX_WIDENING_STEPS):
        candidate = model.model_copy(update={key: scaled_widths(widths, first)})
        if count_parameters(candidate) >= min_parameters:
            return candidate
    raise ConfigError(f"static_width: no width up to {widths[0] + MAX_WIDENING_STEPS} reaches "
                      f"{min_parameters} parameters")
