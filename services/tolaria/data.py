"""Datasets: scikit-learn's bundled digits, MNIST-style files from a folder, or the synthetic task suite.

The synthetic tasks are generated from the run's seed (no download), each with its own shape of
difficulty for an under-capacity host:

* ``spirals``: interleaved spirals, one class per arm (a smooth but winding boundary);
* ``checkerboard``: points in the cells of a k x k board, class = colour of the cell (many
  axis-aligned pieces of boundary: a one-hidden-layer ReLU net needs about one unit per
  boundary line, so a narrow layer lacks *width*);
* ``parity``: noisy +-1 bit vectors, class = parity of the bits (every bit matters to every
  label: a compositional XOR-of-XORs that narrow or shallow hosts learn poorly).
Every synthetic task has exactly the same number of samples in each class.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.core.errors import InputError
from services.tolaria.config import DataConfig


class DataError(InputError):
    pass


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    sample_shape: list[int]  # image datasets: [C, H, W]; vectors: [features]


def load_dataset(cfg: DataConfig, seed: int, image: bool) -> Dataset:
    """Load and split (train / validation / test, fixed by ``seed``). ``image``: keep [C,H,W] shape."""
    if cfg.dataset == "digits":
        x, y, shape = _digits()
    elif cfg.dataset == "spirals":
        if image:
            raise DataError("the spirals task is 2-D points: use model.kind mlp")
        x, y, shape = _spirals(cfg.spiral_arms, cfg.spiral_points, cfg.spiral_noise, seed)
    elif cfg.dataset in ("checkerboard", "parity"):
        if image:
            raise DataError(f"the {cfg.dataset} task is vectors: use model.kind mlp")
        if cfg.dataset == "checkerboard":
            x, y, shape = checkerboard(cfg.checkerboard_cells, cfg.checkerboard_points, cfg.checkerboard_noise, seed)
        else:
            x, y, shape = parity(cfg.parity_bits, cfg.parity_points, cfg.parity_noise, seed)
    else:
        x, y, shape = _folder(Path(cfg.path or ""))
    if not image:
        x = x.reshape(len(x), -1)
        shape = [int(np.prod(shape))]
    else:
        x = x.reshape(len(x), *shape)
    return _split(cfg.dataset, x, y, shape, cfg.val_fraction, cfg.test_fraction, seed)


def _digits() -> tuple[np.ndarray, np.ndarray, list[int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64), [1, 8, 8]


def _spirals(arms: int, points: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Interleaved spirals: far from linearly separable, so a small host lacks capacity."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for arm in range(arms):
        r = np.linspace(0.1, 1.0, points)
        theta = 2 * math.pi * arm / arms + r * 3.5 * math.pi + rng.normal(0, noise * 0.3, points)
        xs.append(np.stack([r * np.cos(theta), r * np.sin(theta)], 1) + rng.normal(0, noise * 0.05, (points, 2)))
        ys.append(np.full(points, arm))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), [2]


def checkerboard(cells: int, points: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``points`` per class, uniform in the cells of their colour on a ``cells`` x ``cells`` board over [-1, 1]^2;
    ``noise``: Gaussian jitter in units of a cell's side (points may cross into a neighbour's cell)."""
    rng = np.random.default_rng(seed)
    side = 2.0 / cells
    xs, ys = [], []
    for label in (0, 1):
        # The cells of this colour: (i + j) % 2 == label; each point picks one, then a place inside it.
        ij = np.array([(i, j) for i in range(cells) for j in range(cells) if (i + j) % 2 == label])
        pick = ij[rng.integers(0, len(ij), points)]
        inside = rng.random((points, 2))
        xy = -1.0 + side * (pick + inside) + rng.normal(0, noise * side, (points, 2))
        xs.append(xy)
        ys.append(np.full(points, label))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), [2]


def parity(bits: int, points: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``points`` per class of ``bits``-long +-1 vectors plus Gaussian ``noise``; class = parity of the 1 bits."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label in (0, 1):
        b = rng.integers(0, 2, (points, bits))
        b[:, -1] = (b[:, :-1].sum(1) + label) % 2  # the last bit sets the parity to the label
        xs.append(2.0 * b - 1.0 + rng.normal(0, noise, (points, bits)))
        ys.append(np.full(points, label))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), [bits]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path.name} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path.name}: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _folder(folder: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """MNIST / Fashion-MNIST IDX files, or ``data.npz`` with arrays ``x`` and ``y`` (no pickles)."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    npz = folder / "data.npz"
    if npz.exists():
        try:
            with np.load(npz, allow_pickle=False) as archive:
                if "x" not in archive or "y" not in archive:
                    raise DataError(f"{npz} needs arrays 'x' and 'y'")
                x, y = archive["x"].astype(np.float32), archive["y"].astype(np.int64)
        except (ValueError, OSError) as exc:  # object arrays need pickle: refused
            raise DataError(f"cannot read {npz}: {exc}") from None
        shape = list(x.shape[1:]) if x.ndim > 2 else [x.shape[1]]
        if x.ndim == 3:
            shape = [1, *x.shape[1:]]
        return x, y, shape
    images = [_find(folder, f"{p}-images-idx3-ubyte") for p in ("train", "t10k")]
    labels = [_find(folder, f"{p}-labels-idx1-ubyte") for p in ("train", "t10k")]
    if images[0] is None or labels[0] is None:
        raise DataError(
            f"{folder} has neither data.npz nor train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]"
        )
    xs = [_read_idx(p) for p in images if p is not None]
    ys = [_read_idx(p) for p in labels if p is not None]
    x = np.concatenate(xs).astype(np.float32) / 255.0
    y = np.concatenate(ys).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{folder}: {len(x)} images but {len(y)} labels")
    return x, y, [1, x.shape[1], x.shape[2]]


def _split(name: str, x: np.ndarray, y: np.ndarray, shape: list[int], val: float, test: float, seed: int) -> Dataset:
    if len(x) < 10:
        raise DataError(f"dataset {name} has only {len(x)} samples")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test, n_val = max(1, int(len(x) * test)), max(1, int(len(x) * val))
    parts = np.split(order, [n_test, n_test + n_val])
    to = lambda idx: Split(torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx]))  # noqa: E731
    return Dataset(name, train=to(parts[2]), val=to(parts[1]), test=to(parts[0]),
                   num_classes=int(y.max()) + 1, sample_shape=shape)
