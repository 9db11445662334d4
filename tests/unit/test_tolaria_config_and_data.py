"""Run configs and datasets: clear one-line errors, real data, splits that do not overlap."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from services.tolaria.config import ConfigError, DataConfig, load_config, parse_config
from services.tolaria.data import DataError, load_dataset


def test_examples_are_valid(tmp_path):
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.epochs >= 1


@pytest.mark.parametrize("raw, message", [
    ({"epochs": 0}, "config: epochs: Input should be greater than or equal to 1"),
    ({"model": {"kind": "transformer"}}, "config: model.kind: Input should be 'mlp' or 'cnn'"),
    ({"data": {"dataset": "folder"}}, "dataset 'folder' needs data.path"),
    ({"optimiser": {}}, "config: optimiser: Extra inputs are not permitted"),
    ([1, 2], "expected a mapping"),
])
def test_invalid_configs(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_digits_splits_are_disjoint_and_fixed_by_the_seed():
    a = load_dataset(DataConfig(dataset="digits"), seed=1, image=False)
    b = load_dataset(DataConfig(dataset="digits"), seed=1, image=True)
    assert a.sample_shape == [64] and b.sample_shape == [1, 8, 8] and a.num_classes == 10
    total = len(a.train.y) + len(a.val.y) + len(a.test.y)
    assert total == 1797
    rows = {tuple(r.tolist()) for r in a.val.x} & {tuple(r.tolist()) for r in a.test.x}
    assert len(rows) <= 2, "validation and test are separate splits (digits has a couple of duplicate images)"
    assert float(a.train.x.max()) <= 1.0


def test_spirals_are_three_balanced_classes():
    d = load_dataset(DataConfig(dataset="spirals", spiral_points=100), seed=0, image=False)
    assert d.num_classes == 3 and d.sample_shape == [2]
    with pytest.raises(DataError, match="spirals task is 2-D points"):
        load_dataset(DataConfig(dataset="spirals"), seed=0, image=True)


def _idx(path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_style_folder(tmp_path):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 6, 6)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    d = load_dataset(DataConfig(dataset="folder", path=str(tmp_path)), seed=0, image=True)
    assert d.sample_shape == [1, 6, 6] and len(d.train.y) + len(d.val.y) + len(d.test.y) == 50
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0


def test_npz_folder_refuses_pickles(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.empty(20, dtype=object), y=np.zeros(20))
    with pytest.raises(DataError, match="allow_pickle"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path)), seed=0, image=False)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "nope")), seed=0, image=False)
