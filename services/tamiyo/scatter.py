"""Scatter reductions over graph nodes, with two interchangeable backends.

Every segment reduction of Tamiyo's message passing goes through one ``ScatterBackend``:

- ``native``: plain torch (``index_add_``, ``scatter_reduce_(amax)``), always available;
- ``torch_scatter``: the optional torch-scatter extension (``pip install torch-scatter``).

Both give the same numbers (tested); ``select_backend`` times them on the current device
and picks the faster one instead of assuming torch-scatter wins.

Shapes:
    src:    (E, F) one row per edge (or per node being pooled)
    index:  (E,)   int64 target segment of each row, in [0, dim_size)
    output: (dim_size, F); a segment that receives no row is 0 for every reduction
"""

from __future__ import annotations

import statistics
import time
from typing import Protocol

import torch
from torch import Tensor


class ScatterBackend(Protocol):
    name: str

    def sum(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor: ...

    def mean(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor: ...

    def max(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor: ...


class NativeScatter:
    name = "native"

    def sum(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        return src.new_zeros((dim_size, *src.shape[1:])).index_add_(0, index, src)

    def mean(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        count = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add_(
            0, index, torch.ones_like(index, dtype=src.dtype))
        return self.sum(src, index, dim_size) / count.clamp_min(1).view(-1, *([1] * (src.dim() - 1)))

    def max(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        expanded = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
        return src.new_zeros((dim_size, *src.shape[1:])).scatter_reduce_(0, expanded, src, "amax", include_self=False)


class TorchScatter:
    name = "torch_scatter"

    def __init__(self) -> None:
        import torch_scatter  # optional extra; ImportError means "not available"

        self._ts = torch_scatter

    def sum(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        return self._ts.scatter_sum(src, index, dim=0, dim_size=dim_size)

    def mean(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        return self._ts.scatter_mean(src, index, dim=0, dim_size=dim_size)

    def max(self, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
        return self._ts.scatter_max(src, index, dim=0, dim_size=dim_size)[0]


def available_backends() -> list[ScatterBackend]:
    backends: list[ScatterBackend] = [NativeScatter()]
    try:
        backends.append(TorchScatter())
    except (ImportError, OSError):  # absent, or built against another torch
        pass
    return backends


def time_backend(backend: ScatterBackend, device: torch.device, nodes: int = 1000, edges: int = 4000,
                 features: int = 64, repeats: int = 30) -> float:
    """Median milliseconds of one sum + max over a random graph of this size."""
    generator = torch.Generator().manual_seed(0)
    src = torch.randn(edges, features, generator=generator).to(device)
    index = torch.randint(0, nodes, (edges,), generator=generator).to(device)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        backend.sum(src, index, nodes)
        backend.max(src, index, nodes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def select_backend(device: torch.device, preference: str = "auto") -> tuple[ScatterBackend, dict[str, float]]:
    """The backend to use: ``preference`` if named, else the faster one measured on ``device``."""
    backends = {b.name: b for b in available_backends()}
    if preference != "auto":
        if preference not in backends:
            raise ValueError(f"scatter backend {preference!r} is not available (have: {', '.join(backends)})")
        return backends[preference], {}
    timings = {name: time_backend(b, device) for name, b in backends.items()}
    return backends[min(timings, key=timings.__getitem__)], timings
