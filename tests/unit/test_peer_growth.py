"""The gromo arm: its growth plan and parameter budget (pure), gromo's growth of the host to that budget, the
arm's config, and the one-line error when gromo cannot be imported."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from services.core.errors import EsperError
from services.peers.budget import GrowthPlan, epoch_quota, mlp_parameters, plan_growth, unit_cost, units_that_fit
from services.peers.gromo_arm import GromoGrower, PeerError, build_growing_mlp, parameters, require_gromo, widths
from services.tolaria.config import ConfigError, parse_config
from services.tolaria.experiment_plan import Grown, arm_config, ordered_arms
from services.tolaria.models import build_host
from services.tolaria.models import parameter_count as host_parameters
from services.tolaria.training_setup import build_training, restore

BASE = parse_config({"name": "cb", "epochs": 6, "data": {"dataset": "checkerboard", "checkerboard_cells": 2,
                                                        "checkerboard_points": 60},
                     "model": {"hidden": [8]}, "seeds": {"target_layers": ["body.0"], "per_layer": 2}})

# -- the plan and the budget (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("epochs, steps, fraction, expected", [
    (40, None, 0.5, tuple(range(1, 21))),  # the default: every epoch of the first half
    (40, 4, 0.5, (1, 7, 14, 20)),
    (40, 1, 0.5, (20,)),
    (6, 4, 0.5, (1, 2, 3)),  # fewer epochs in the first half than steps: every one of them
    (4, 4, 0.5, (1, 2)),
    (2, 4, 0.5, (1,)),
    (1, 4, 0.5, (0,)),  # a one-epoch run grows at its start
    (10, 3, 1.0, (1, 5, 9)),  # never at or after the last epoch's start + 1
])
def test_growth_epochs_spread_over_the_first_part_of_the_run(epochs, steps, fraction, expected):
    plan = plan_growth(epochs, 100, steps, fraction)
    assert plan.epochs == expected
    assert all(0 <= e < epochs for e in plan.epochs) and list(plan.epochs) == sorted(set(plan.epochs))


@pytest.mark.parametrize("bad", [(0, 4, 0.5), (10, 0, 0.5), (10, 4, 0.0), (10, 4, 1.5)])
def test_a_bad_plan_is_a_value_error(bad):
    with pytest.raises(ValueError, match="growth plan"):
        plan_growth(bad[0], 100, bad[1], bad[2])


def test_unit_cost_is_what_a_unit_adds_to_the_mlp():
    for mlp in ([2, 8, 3], [6, 4, 2], [2, 8, 8, 2], [64, 5, 7, 9, 10]):
        for i in range(len(mlp) - 2):
            wider = [*mlp[: i + 1], mlp[i + 1] + 1, *mlp[i + 2 :]]
            assert mlp_parameters(wider) - mlp_parameters(mlp) == unit_cost(mlp, i)
    assert mlp_parameters([2, 8, 3]) == 51 == host_parameters(build_host(BASE.model.model_copy(), [2], 3))
    with pytest.raises(ValueError):
        unit_cost([2, 8, 3], 1)


def test_quotas_spend_the_budget_and_never_pass_it():
    plan = plan_growth(40, 243, 4)
    assert epoch_quota(plan, 0, 51) == 0 and epoch_quota(plan, 8, 51) == 0  # not a growth epoch
    assert epoch_quota(plan, 1, 51) == 48  # (243 - 51) / 4
    assert epoch_quota(plan, 20, 200) == 43  # the last growth epoch: all that is left
    assert epoch_quota(plan, 20, 243) == 0 and epoch_quota(plan, 20, 300) == 0  # spent, or over already
    for target, cost in ((243, 6), (1466, 5), (202, 5), (1253, 9), (52, 6)):
        plan, params, widths_ = GrowthPlan((1, 7, 14, 20), target), 51, [2, 8, 3]
        for epoch in range(40):
            add = units_that_fit(epoch_quota(plan, epoch, params), cost)
            params += add * cost
            assert params <= target
        assert target - params < cost  # the plan spends the budget to within one unit
        del widths_
    assert units_that_fit(11, 5) == 2 and units_that_fit(-3, 5) == 0


# -- gromo's growth of the host ----------------------------------------------------------------------------------


def _task(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()  # XOR: a width-2 host cannot fit it


@pytest.mark.parametrize("method", ["tiny", "gradmax"])
def test_gromo_grows_the_host_to_the_budget_and_no_further(method):
    torch.manual_seed(0)
    model = build_growing_mlp(2, [2], 2, torch.device("cpu"))
    assert parameters(model) == mlp_parameters([2, 2, 2]) == 12  # the same count as Tolaria's MLP
    target = 12 + 7 * unit_cost([2, 2, 2], 0) + 3  # 7 units and change
    grower = GromoGrower(model, GrowthPlan((0, 1), target), method)
    x, y = _task()
    added = [grower.before_epoch(epoch, x, y) for epoch in range(3)]
    assert added[0] > 0 and added[2] == 0  # epoch 2 is not in the plan
    assert parameters(model) == 12 + sum(added) == mlp_parameters(widths(model))
    assert target - 5 < parameters(model) <= target and widths(model) == [2, 9, 2]
    before = [p.clone() for p in model.parameters()]
    assert grower.before_epoch(1, x, y) == 0  # budget spent: nothing changes
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_gromo_grows_one_hidden_layer_of_a_deeper_host_per_round_within_the_budget():
    torch.manual_seed(1)
    model = build_growing_mlp(2, [3, 3], 2, torch.device("cpu"))
    target = parameters(model) + 40
    x, y = _task(seed=1)
    GromoGrower(model, GrowthPlan((0,), target), "tiny").before_epoch(0, x, y)
    w = widths(model)
    assert parameters(model) == mlp_parameters(w) and parameters(model) <= target and w[1:3] != [3, 3]


def test_gromo_grows_only_an_mlp_with_equal_hidden_widths():
    with pytest.raises(PeerError, match="equal hidden widths"):
        build_growing_mlp(2, [8, 4], 2, torch.device("cpu"))
    with pytest.raises(PeerError, match="unknown gromo method"):
        GromoGrower(build_growing_mlp(2, [2], 2, torch.device("cpu")), GrowthPlan((0,), 20), "firefly")


# -- the arm -----------------------------------------------------------------------------------------------------


def test_the_gromo_arm_is_opt_in_and_sized_from_the_adaptive_arm():
    assert ordered_arms(["gromo", "adaptive"]) == ["adaptive", "gromo"]
    with pytest.raises(ConfigError, match="add the adaptive arm"):
        ordered_arms(["no_adapt", "gromo"])
    cfg = arm_config(BASE, "exp", "gromo", 2, Grown(202, ()))
    assert cfg.experiment and cfg.experiment.arm == "gromo" and cfg.seed == 2 and cfg.model == BASE.model
    peer = cfg.peer_growth
    assert peer and peer.target_parameters == 202 and peer.method == "tiny" and peer.steps is None
    assert cfg.seeds.target_layers == [] and not cfg.adaptation.enabled
    with pytest.raises(ConfigError, match="needs the adaptive arm"):
        arm_config(BASE, "exp", "gromo", 2, None)
    cnn = BASE.model_copy(update={"model": BASE.model.model_copy(update={"kind": "cnn"})})
    with pytest.raises(ConfigError, match="grows plain MLP hosts"):
        arm_config(cnn, "exp", "gromo", 2, Grown(202, ()))


def test_a_gromo_arm_trains_gromos_mlp_with_the_hosts_parameters():
    cfg = arm_config(BASE, "exp", "gromo", 0, Grown(202, ()))
    setup = build_training(cfg, adapt=False)
    assert setup.grower is not None and type(setup.model).__name__ == "GrowingMLP" and setup.slots == {}
    assert setup.host_parameters == host_parameters(build_host(BASE.model, [2], 2)) == 42
    plain = build_training(BASE, adapt=True)
    assert plain.grower is None
    with pytest.raises(ConfigError, match="a gromo arm's run cannot be resumed"):  # its layers are gromo's
        restore(setup, SimpleNamespace(meta=SimpleNamespace(config=cfg)))  # type: ignore[arg-type]
    bad = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden": [8, 4]})})
    with pytest.raises(ConfigError, match="model: the gromo arm grows an MLP host with equal hidden widths"):
        build_training(bad, adapt=False)


def test_without_gromo_the_arm_is_a_one_line_error_naming_the_package(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_gromo(name, *args, **kwargs):
        if name == "gromo" or name.startswith("gromo."):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name="gromo")
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m == "gromo" or m.startswith("gromo.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", no_gromo)
    with pytest.raises(PeerError) as caught:
        require_gromo()
    assert isinstance(caught.value, EsperError) and "'gromo' package" in str(caught.value)
    assert "\n" not in str(caught.value)

    from services.cli.main import main  # the command says so before it runs any arm (no broker is needed)

    example = str(Path(__file__).resolve().parents[2] / "examples" / "checkerboard-adaptive.yaml")
    assert main(["experiment", example, "--arms", "adaptive", "gromo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esper: error: the gromo arm needs the 'gromo' package")
