"""Experiments: the arms planned from a config (static_width matches parameters, static_final is the grown
network with its fossils built in: branches, widened layers, residual blocks, the same parameter count),
the 95 % CI arithmetic (Python and SQL agree with Student's t), and Nissa's
``experiments`` view over hand-made sessions and epochs."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import torch

from contracts import SeedId, SeedState
from services.blueprints.modules import build_module
from services.blueprints.starter import conv_adapter, depth_block, mlp_adapter, width_units
from services.kasmina.seed_manager import Evaluation, KernelInfo, LifecycleSettings, SeedManager
from services.kasmina.wrap import wrap_layers
from services.nissa.confidence import T_975, mean_ci95, t_critical, t_critical_sql, t_expansion
from services.nissa.experiment_report import ArmRow, ExperimentData, load_experiment, render, text_table
from services.tolaria.config import ConfigError, ModelConfig, parse_config
from services.tolaria.experiment_plan import Fossil, Grown, arm_config, ordered_arms, scaled_widths, widened
from services.tolaria.models import build_host, parameter_count
from tests.unit.nissa_fakes import new_store

BASE = parse_config({"name": "cb", "data": {"dataset": "checkerboard"}, "model": {"hidden": [8]},
                     "seeds": {"target_layers": ["body.0"], "per_layer": 2}})


def count(model: ModelConfig) -> int:
    return parameter_count(build_host(model, [2], 2))


# -- arm planning -------------------------------------------------------------------------------------------

def test_arms_run_adaptive_first_and_bad_lists_are_one_line():
    assert ordered_arms(["static_width", "no_adapt", "adaptive"]) == ["adaptive", "no_adapt", "static_width"]
    with pytest.raises(ConfigError, match="unknown arm"):
        ordered_arms(["adaptive", "nope"])
    with pytest.raises(ConfigError, match="add the adaptive arm"):
        ordered_arms(["no_adapt", "static_final"])


@pytest.mark.parametrize("hidden, target", [([8], 42), ([8], 43), ([8], 1466), ([8, 4], 900), ([3], 10_000)])
def test_static_width_is_the_narrowest_widening_with_at_least_the_grown_parameters(hidden, target):
    model = ModelConfig(hidden=hidden)
    wide = widened(model, target, count)
    assert count(wide) >= target
    assert len(wide.hidden) == len(hidden) and wide.hidden[0] >= hidden[0]
    if wide.hidden[0] > hidden[0]:  # one step narrower falls short
        assert count(model.model_copy(update={"hidden": scaled_widths(hidden, wide.hidden[0] - 1)})) < target
    assert scaled_widths([8, 4], 12) == [12, 6]


def test_arm_configs():
    arch = mlp_adapter(2, 8, 64).architecture
    grown = Grown(parameter_count=42 + 2 * 754 - 2 * 42 + 42, fossils=(Fossil("body.0", arch), Fossil("body.0", arch)))
    adaptive = arm_config(BASE, "exp", "adaptive", 3, None)
    assert adaptive.seed == 3 and adaptive.experiment and adaptive.experiment.arm == "adaptive"
    assert adaptive.seeds.target_layers == ["body.0"] and adaptive.adaptation.enabled
    final = arm_config(BASE, "exp", "static_final", 3, grown)
    assert final.seeds.target_layers == [] and not final.adaptation.enabled and final.seed == 3
    assert [b.layer for b in final.model.branches] == ["body.0", "body.0"]
    # the grown network's parameters: the host plus both kernels, as plain layers
    assert count(final.model) == 42 + 2 * (2 * 64 + 64 + 64 * 8 + 8)
    width = arm_config(BASE, "exp", "static_width", 3, grown, count)
    assert width.model.branches == [] and count(width.model) >= grown.parameter_count
    with pytest.raises(ConfigError, match="needs the adaptive arm"):
        arm_config(BASE, "exp", "static_final", 3, None)


# -- the CI arithmetic ---------------------------------------------------------------------------------------

def test_t_quantiles():
    assert t_critical(2) == pytest.approx(4.3027) and t_critical(9) == pytest.approx(2.2622)
    assert t_expansion(30) == pytest.approx(T_975[29], abs=1e-4)  # the expansion meets the table where it takes over
    assert t_critical(120) == pytest.approx(1.9799, abs=1e-4) and t_critical(10**6) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t_critical(0)


def test_mean_ci95():
    mean, half = mean_ci95([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.3027 * 0.1 / math.sqrt(3))
    assert mean_ci95([0.4]) == (0.4, None)


def test_sql_quantiles_match_python():
    with duckdb.connect() as con:
        for df in (1, 2, 5, 29, 30, 31, 45, 200):
            assert con.execute(f"SELECT {t_critical_sql(str(df))}").fetchone()[0] == pytest.approx(t_critical(df))


# -- the experiments view ------------------------------------------------------------------------------------

RUNS = {  # arm -> [(seed, val, test, params)]
    "adaptive": [(0, 0.80, 0.78, 1466), (1, 0.84, 0.80, 1466), (2, 0.82, 0.79, 1466)],
    "no_adapt": [(0, 0.60, 0.58, 42), (1, 0.62, 0.61, 42), (2, 0.58, 0.57, 42)],
    "static_width": [(0, 0.90, 0.88, 1500), (1, 0.91, 0.89, 1500)],
}


def _fill(db):
    new_store(db).close()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with duckdb.connect(str(db)) as con:
        for arm, rows in RUNS.items():
            for seed, val, test, params in rows:
                run = f"exp-{arm}-s{seed}"
                for i, (status, v, t) in enumerate((("running", None, None), ("completed", val, test))):
                    con.execute(
                        "INSERT INTO training_session_event (run_id, timestamp, experiment_id, experiment_arm, "
                        "session_training_config_random_seed, session_training_config_dataset, session_status, "
                        "final_validation_accuracy, final_test_accuracy) VALUES (?, ?, 'exp', ?, ?, 'checkerboard', "
                        "?, ?, ?)", [run, t0 + timedelta(seconds=i), arm, seed, status, v, t])
                for epoch in range(2):  # epoch 1 twice: read twice, counted once
                    for _ in range(1 + epoch):
                        con.execute("INSERT INTO epoch_completed (run_id, state_epoch, parameter_count, epoch_seconds) "
                                    "VALUES (?, ?, ?, 1.5)", [run, epoch, params if epoch else 42])
        # a plain run (no experiment) and a failed arm stay out of the arms' statistics
        con.execute("INSERT INTO training_session_event (run_id, timestamp, session_status) VALUES "
                    "('plain', ?, 'completed')", [t0])
        con.execute("INSERT INTO training_session_event (run_id, timestamp, experiment_id, experiment_arm, "
                    "session_status) VALUES ('exp-adaptive-s9', ?, 'exp', 'adaptive', 'failed')", [t0])


def test_experiments_view(tmp_path):
    db = tmp_path / "nissa.duckdb"
    _fill(db)
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT count(*), count(DISTINCT experiment_id) FROM experiment_runs").fetchone()
        assert runs == (9, 1)
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT arm, n, val_mean, val_ci95, test_mean, parameters, train_seconds, gain_per_1k_params "
            "FROM experiments WHERE experiment_id = 'exp'").fetchall()}
        data = load_experiment(con, "exp")
    assert set(rows) == {"adaptive", "no_adapt", "static_width"}
    for arm, expected in RUNS.items():
        n, val_mean, val_ci, test_mean, params, seconds, gain = rows[arm]
        vals = [r[1] for r in expected]
        assert n == len(expected) and val_mean == pytest.approx(statistics.fmean(vals))
        assert val_ci == pytest.approx(mean_ci95(vals)[1])
        assert test_mean == pytest.approx(statistics.fmean(r[2] for r in expected))
        assert params == expected[0][3] and seconds == pytest.approx(3.0)
        if arm == "no_adapt":
            assert gain is None
        else:
            assert gain == pytest.approx((val_mean - 0.60) / ((params - 42) / 1000))
    assert [a.arm for a in data.arms] == ["adaptive", "no_adapt", "static_width"]
    assert data.relative_to_best_static() is None  # static_width has more parameters than the grown network
    text = text_table(data)
    assert "| adaptive     | 3 | 0.8200 ± 0.0497 " in text and "| static_width | 2 | 0.9050 ± 0.0635 " in text
    page, plot = render(data)
    assert plot.drawn["adaptive:val_mean"] == 0.82 and plot.drawn["no_adapt:parameters"] == 42
    assert "exp-static_width-s1" in page


def test_relative_to_the_best_static_arm_with_no_more_parameters():
    arm = lambda name, val, params: ArmRow(name, "x", 3, val, 0.01, val, 0.01, params, 1.0, None)  # noqa: E731
    data = ExperimentData("e", [arm("adaptive", 0.76, 1000), arm("static_final", 0.80, 1000),
                                arm("static_width", 0.95, 1001), arm("no_adapt", 0.5, 40)], [])
    assert data.relative_to_best_static() == pytest.approx(0.95)


@pytest.mark.parametrize("args, code, message", [
    (["--arms", "adaptive", "nope"], 1,
     "unknown arm(s) nope; arms: adaptive, no_adapt, static_final, static_width, gromo"),
    (["--arms", "gromo"], 1, "sized from the adaptive arm: add the adaptive arm"),
    (["--arms", "static_width"], 1, "sized from the adaptive arm: add the adaptive arm"),
    (["--seeds", "1", "1"], 2, "--seeds must be distinct non-negative integers"),
    (["--experiment-id", "a b"], 1, "experiment id 'a b' must be 1-56 letters"),
])
def test_experiment_command_errors_are_one_line_before_any_run(args, code, message, capsys):
    from services.cli.main import main

    example = str(Path(__file__).resolve().parents[2] / "examples" / "parity-adaptive.yaml")
    assert main(["experiment", example, *args]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.strip().splitlines()[-1].startswith("esper: error:")


def test_report_needs_a_run_or_an_experiment(capsys):
    from services.cli.main import main

    assert main(["report"]) == 2
    assert "give a RUN_ID or --experiment ID" in capsys.readouterr().err


# -- static_final: the grown network, every fossil kind ------------------------------------------------------

def grow(kind: str, fossils: list[tuple[str, str]]):
    """A host grown by hand: each (layer, seed kind) germinated, grafted and fossilized in turn (Kasmina widens
    only a layer that holds no other seed: widths first)."""
    torch.manual_seed(0)
    model_cfg, shape = (ModelConfig(kind="mlp", hidden=[6, 5]), [4]) if kind == "mlp" else \
        (ModelConfig(kind="cnn", channels=[3, 4]), [2, 6, 6])
    model = build_host(model_cfg, shape, 3)
    slots = wrap_layers(model, sorted({layer for layer, _ in fossils}), 4)
    manager = SeedManager(slots, LifecycleSettings(grafting_steps=1, embargo_epochs=1), model)
    model.eval()
    model(torch.randn(2, *shape))  # records the slots' shapes
    used: dict[str, int] = {}
    for layer, seed_kind in fossils:
        slot = slots[layer]
        if seed_kind == "width":
            bp = width_units(slot.input_shape, slot.output_shape, 3)
        elif seed_kind == "depth":
            bp = depth_block(slot.output_shape, 4)
        else:
            bp = (mlp_adapter(slot.input_shape[0], slot.output_shape[0], 5) if kind == "mlp"
                  else conv_adapter(slot.input_shape, slot.output_shape, 2))
        sid = SeedId(layer_id=slot.layer_id, seed_idx=used.get(layer, 0))
        used[layer] = sid.seed_idx + 1
        events, _ = manager.germinate(sid, build_module(bp.architecture), KernelInfo(f"k{sid}", bp.blueprint_id,
                                      bp.architecture), epoch=0, pre_metric=0.5)
        assert events[-1].to_state is SeedState.TRAINING
        manager.advance(sid, 0, "t")
        manager.after_optimizer_step()
        events, _ = manager.fossilize_gate(sid, 1, evaluate=lambda: Evaluation(1.0, 0.1), current=Evaluation(0.5, 0.9))
        assert events[-1].to_state is SeedState.FOSSILIZED
    base = parse_config({"name": "g", "model": model_cfg.model_dump(), "seeds": {"target_layers": list(slots)}})
    grown = Grown(parameter_count(model), tuple(Fossil(manager.slot(s).layer_name, manager.kernel_info[s].architecture)
                                                for s in manager.seed_ids() if s in manager.kernel_info))
    return base, grown, shape


@pytest.mark.parametrize("kind, fossils", [
    ("mlp", [("body.0", "width")]),
    ("mlp", [("body.2", "width")]),
    ("mlp", [("body.0", "depth")]),
    ("mlp", [("body.0", "branch")]),
    ("mlp", [("body.0", "width"), ("body.2", "width"), ("body.0", "width"), ("body.0", "depth")]),
    ("cnn", [("features.0", "width")]),
    ("cnn", [("features.2", "depth")]),
    ("cnn", [("features.0", "width"), ("features.2", "width"), ("features.2", "branch")]),
])
def test_static_final_has_exactly_the_grown_networks_parameters(kind, fossils):
    base, grown, shape = grow(kind, fossils)
    final = arm_config(base, "exp", "static_final", 1, grown).model
    network = build_host(final, shape, 3)
    assert parameter_count(network) == grown.parameter_count
    assert network(torch.randn(5, *shape)).shape == (5, 3)
    host = base.model.hidden if kind == "mlp" else base.model.channels
    widths = final.hidden if kind == "mlp" else final.channels
    assert sum(widths) - sum(host) == 3 * sum(1 for _, k in fossils if k == "width")
    assert len(final.blocks) == sum(1 for _, k in fossils if k == "depth")
    assert len(final.branches) == sum(1 for _, k in fossils if k == "branch")


def test_a_width_fossil_off_the_hosts_hidden_layers_is_a_one_line_error():
    arch = width_units([6], [3], 2).architecture
    with pytest.raises(ConfigError, match="not one of the host's hidden layers"):
        arm_config(BASE, "exp", "static_final", 0, Grown(100, (Fossil("head", arch),)))
