"""The synthetic task suite: generated from the seed (same seed, same data), right shapes, balanced classes,
one-line errors for what cannot be, and an example config with an under-capacity host for every task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.tolaria.config import ConfigError, DataConfig, load_config, parse_config
from services.tolaria.data import DataError, checkerboard, load_dataset, parity

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASKS = {"spirals": 3, "checkerboard": 2, "parity": 2}


@pytest.mark.parametrize("task, classes", TASKS.items())
def test_tasks_are_fixed_by_the_seed_and_differ_between_seeds(task, classes):
    a, b = (load_dataset(DataConfig(dataset=task), seed=3, image=False) for _ in range(2))
    c = load_dataset(DataConfig(dataset=task), seed=4, image=False)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).x.numpy(), getattr(b, split).x.numpy())
        assert np.array_equal(getattr(a, split).y.numpy(), getattr(b, split).y.numpy())
    assert not np.array_equal(a.train.x.numpy(), c.train.x.numpy())
    assert a.num_classes == classes


@pytest.mark.parametrize("generate, args, features", [
    (checkerboard, (4, 250, 0.05), 2),
    (checkerboard, (6, 31, 0.0), 2),
    (parity, (6, 250, 0.3), 6),
    (parity, (9, 31, 0.0), 9),
])
def test_shapes_and_exact_class_balance(generate, args, features):
    x, y, shape = generate(*args, seed=0)
    points = args[1]
    assert x.shape == (2 * points, features) and shape == [features] and x.dtype == np.float32
    assert np.bincount(y).tolist() == [points, points]


def test_checkerboard_labels_are_the_colour_of_the_cell():
    cells = 5
    x, y, _ = checkerboard(cells, 400, 0.0, seed=1)  # no jitter: every point inside its own cell
    ij = np.floor((x + 1.0) / (2.0 / cells)).astype(int)
    assert (x >= -1).all() and (x <= 1).all()
    assert np.array_equal(ij.sum(1) % 2, y)


def test_parity_labels_are_the_parity_of_the_bits():
    x, y, _ = parity(7, 300, 0.0, seed=2)
    assert set(np.unique(x).tolist()) == {-1.0, 1.0}
    assert np.array_equal(((x > 0).sum(1) % 2), y)


@pytest.mark.parametrize("raw, message", [
    ({"data": {"dataset": "xor"}}, "data.dataset: Input should be 'digits', 'spirals', 'checkerboard', 'parity'"),
    ({"data": {"dataset": "checkerboard", "checkerboard_cells": 1}}, "data.checkerboard_cells: Input should be"),
    ({"data": {"dataset": "parity", "parity_bits": 40}}, "data.parity_bits: Input should be less than"),
])
def test_bad_task_names_and_parameters_are_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(raw)
    assert "\n" not in str(caught.value)


def test_vector_tasks_refuse_a_cnn():
    with pytest.raises(DataError, match="parity task is vectors: use model.kind mlp"):
        load_dataset(DataConfig(dataset="parity"), seed=0, image=True)


def test_every_task_has_an_example_with_an_under_capacity_host_and_a_budget():
    configs = [load_config(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    tasks = {c.data.dataset for c in configs}
    assert {"digits", "spirals", "checkerboard", "parity"} <= tasks
    for task in ("checkerboard", "parity"):
        cfg = next(c for c in configs if c.data.dataset == task)
        assert cfg.model.hidden and max(cfg.model.hidden) <= 8 and cfg.adaptation.budget >= 1


def _validation_accuracy(cfg_path: Path, hidden: list[int], epochs: int = 20) -> float:
    """Train a plain MLP of ``hidden`` widths on the example's task (no bus, no seeds); validation accuracy."""
    import torch

    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    data = load_dataset(cfg.data, 0, image=False)
    from services.tolaria.config import ModelConfig
    from services.tolaria.models import build_host

    model = build_host(ModelConfig(hidden=hidden), data.sample_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train.y), generator=generator).split(32):
            loss = torch.nn.functional.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((model(data.val.x).argmax(1) == data.val.y).float().mean())


@pytest.mark.parametrize("example, wide", [("checkerboard-adaptive.yaml", [64, 64]), ("parity-adaptive.yaml", [64])])
def test_the_example_hosts_are_under_capacity(example, wide):
    """The science the suite rests on: the example's host is far from what a wider net of its family reaches."""
    cfg = load_config(EXAMPLES / example)
    host = _validation_accuracy(EXAMPLES / example, cfg.model.hidden)
    big = _validation_accuracy(EXAMPLES / example, wide)
    assert big >= 0.8 and big - host >= 0.2, (host, big)


def test_karns_default_library_has_kernels_for_every_example_slot():
    """`esper up` starts Karn with its default slots: Tamiyo can germinate in every example run without
    `esper serve karn --slot ...` (parity's Linear 6 -> 4 slot had no kernels: the adaptive arm could not grow)."""
    from services.karn.starter_library import DEFAULT_SLOTS
    from services.tolaria.training_setup import build_training

    for path in sorted(EXAMPLES.glob("*.yaml")):
        shapes = build_training(load_config(path), adapt=True).slot_shapes()
        assert shapes, path.name
        for slot, (in_shape, out_shape) in shapes.items():
            assert (tuple(in_shape), tuple(out_shape)) in DEFAULT_SLOTS, (path.name, slot, in_shape, out_shape)


def test_widened_starters_cover_the_slots_karn_offers_after_a_width_fossil():
    """`esper blueprint starters --widened`: every slot a fossilized width seed of a slot makes (what Karn's
    generator answers such a fossil with) has the same starters as Karn would give it, and nothing else is added."""
    from services.blueprints.starter import for_slot, widened_slot
    from services.karn.starter_library import starter_library

    slots = [((2,), (8,)), ((1, 8, 8), (4, 8, 8))]
    base = {bp.blueprint_id for bp in starter_library(slots)}
    grown = {bp.blueprint_id: bp for bp in starter_library(slots, widened=True)}
    width = [bp for bp in starter_library(slots) if widened_slot(bp)]
    assert len(width) == 4  # two widths per slot
    expected = set(base)
    for bp in width:
        in_shape, out_shape = widened_slot(bp)
        assert out_shape[0] > bp.architecture.output_shape[0]
        expected |= {starter.blueprint_id for starter in for_slot(in_shape, out_shape)}
    assert set(grown) == expected and len(expected) > len(base)
    assert [bp.blueprint_id for bp in starter_library(slots, widened=True)] == list(grown)  # the same ids each time


@pytest.mark.parametrize("argv, message", [
    (["blueprint", "starters", "--slot", "2-8"], "must look like 64:16"),
    (["blueprint", "starters", "some.yaml"], "takes no FILE"),
    (["blueprint", "submit"], "takes one FILE"),
    (["blueprint", "submit", "some.yaml", "--widened"], "takes one FILE"),
])
def test_blueprint_command_misuse_is_a_one_line_error(argv, message, capsys):
    from services.cli.main import main

    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
