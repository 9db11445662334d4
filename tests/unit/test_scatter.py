"""Both scatter backends give the same numbers as a plain loop, for every reduction, dtype and shape."""

from __future__ import annotations

import builtins

import pytest
import torch

from services.tamiyo import scatter
from services.tamiyo.scatter import NativeScatter, TorchScatter, available_backends, select_backend

BACKENDS = [NativeScatter(), TorchScatter()]  # torch-scatter is part of the test environment (make venv)


def reference(op: str, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    out = torch.zeros((dim_size, *src.shape[1:]), dtype=src.dtype)
    for node in range(dim_size):
        rows = src[index == node]
        if len(rows):
            out[node] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[op]
    return out


CASES = [  # (edges, features, nodes): includes nodes that receive nothing and a single node
    (1, 1, 1), (7, 3, 5), (40, 16, 10), (200, 8, 300), (64, 1, 1),
]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("edges, features, nodes", CASES)
def test_backends_match_the_reference(backend, op, dtype, edges, features, nodes):
    g = torch.Generator().manual_seed(edges * 31 + nodes)
    src = torch.randn(edges, features, generator=g, dtype=dtype) - 3.0  # all negative: max must not clip at 0
    index = torch.randint(0, nodes, (edges,), generator=g)
    got = getattr(backend, op)(src, index, nodes)
    assert got.shape == (nodes, features) and got.dtype == dtype
    torch.testing.assert_close(got, reference(op, src, index, nodes), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_the_two_backends_agree_on_a_large_graph(op):
    g = torch.Generator().manual_seed(7)
    src, index = torch.randn(4000, 64, generator=g), torch.randint(0, 1000, (4000,), generator=g)
    native, extension = (getattr(b, op)(src, index, 1000) for b in BACKENDS)
    torch.testing.assert_close(native, extension, rtol=1e-5, atol=1e-6)


def test_selection_is_measured_and_can_be_forced():
    backend, timings = select_backend(torch.device("cpu"))
    assert set(timings) == {"native", "torch_scatter"} and all(t > 0 for t in timings.values())
    assert backend.name == min(timings, key=timings.get)
    assert select_backend(torch.device("cpu"), "native")[0].name == "native"
    with pytest.raises(ValueError, match="not available"):
        select_backend(torch.device("cpu"), "cuda_magic")


def test_without_torch_scatter_everything_still_works(monkeypatch):
    real_import = builtins.__import__

    def no_torch_scatter(name, *args, **kwargs):
        if name == "torch_scatter":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_scatter)
    assert [b.name for b in available_backends()] == ["native"]
    backend, timings = scatter.select_backend(torch.device("cpu"))
    assert backend.name == "native" and list(timings) == ["native"]
