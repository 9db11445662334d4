"""SeedSlot: a host layer plus N seeds whose outputs are blended into the layer's output.

    y = host(x) + sum_i alpha_i * kernel_i(x)          side branches (the default kind)
    y = y + alpha_j * block_j(y)                      depth seeds, after every side branch
    units_w = kernel_w(x), added by the next layer     width seeds (``services.kasmina.growth``)

TRAINING   the seed learns the task in isolation: it adds nothing to the model's
           output (alpha 0, host gradients unchanged); the trainer runs a second,
           seed-only pass (``probe_training``) where it is blended at alpha 1 and
           only the seed's parameters receive gradients (its input is detached).
GRAFTING   alpha ramps 0 -> 1 over a set number of optimizer steps.
FOSSILIZED alpha 1, parameters frozen: the seed is part of the model for good.

A kernel that raises, changes the shape or produces non-finite values is switched
off at once and reported through ``take_failures()`` (the manager culls it).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from contracts import SeedState, layer_id_for_path
from contracts.blueprint_ir import DEPTH, WIDTH
from services.core.errors import EsperError
from services.kasmina.capacity import CapacityAccumulator
from services.kasmina.health import HealthAccumulator
from services.kasmina.lifecycle import state_code, state_of

_CONTRIBUTING = (SeedState.TRAINING, SeedState.GRAFTING, SeedState.FOSSILIZED)


class KasminaError(EsperError, ValueError):
    """A seed slot cannot be made or used as asked."""


class WidthLinkLike(Protocol):
    """What the slot needs of a width seed's link (``services.kasmina.growth.WidthLink``)."""

    pending: tuple[torch.Tensor, float] | None

    def remove(self) -> None: ...


class _SampleClock:
    """Counts a slot's training forwards; the first and then every n-th one is sampled.

    A plain object: a counter on the module itself would go through ``nn.Module.__setattr__`` on every forward."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def tick(self, every: int) -> bool:
        due = self.calls % every == 0
        self.calls += 1
        return due


class SeedSlot(nn.Module):
    # The buffers registered in ``__init__`` (declared so that they type as tensors, not ``Tensor | Module``).
    seed_state: torch.Tensor
    seed_alpha: torch.Tensor
    seed_kernel_digest: torch.Tensor
    seed_epochs_in_state: torch.Tensor
    seed_graft_step: torch.Tensor
    seed_graft_total: torch.Tensor
    seed_embargo_left: torch.Tensor
    seed_pre_metric: torch.Tensor
    seed_errors: torch.Tensor
    seed_germinated_epoch: torch.Tensor

    def __init__(self, host: nn.Module, layer_name: str, num_seeds: int, sample_every: int = 4) -> None:
        super().__init__()
        if not isinstance(host, (nn.Linear, nn.Conv2d)):
            raise KasminaError(f"{layer_name}: seed slots wrap nn.Linear or nn.Conv2d, not {type(host).__name__}")
        if num_seeds < 1:
            raise KasminaError(f"{layer_name}: a seed slot needs at least one seed")
        self.host = host
        self.layer_name = layer_name
        self.layer_id = layer_id_for_path(layer_name)
        self.num_seeds = num_seeds
        self.kernels = nn.ModuleDict()
        n = num_seeds
        self.register_buffer("seed_state", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_alpha", torch.zeros(n))
        self.register_buffer("seed_kernel_digest", torch.zeros(n, 16, dtype=torch.uint8))
        self.register_buffer("seed_epochs_in_state", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_graft_step", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_graft_total", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_embargo_left", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_pre_metric", torch.zeros(n))
        self.register_buffer("seed_errors", torch.zeros(n, dtype=torch.long))
        self.register_buffer("seed_germinated_epoch", torch.zeros(n, dtype=torch.long))
        self.health = HealthAccumulator(num_seeds)
        self.capacity = CapacityAccumulator()  # fed with the consumer layer's gradient (wrap_layers attaches it)
        self.sample_every = max(1, sample_every)
        self.collect_health = True
        self.probe_training = False
        self.input_shape: list[int] | None = None
        self.output_shape: list[int] | None = None
        self._clock = _SampleClock()
        self._alpha_override: dict[int, float] = {}
        self._failures: dict[int, str] = {}
        self.kinds: dict[int, str | None] = {}  # seed -> its kernel's kind (None: a side branch)
        self.width_links: dict[int, WidthLinkLike] = {}  # set by the manager for width seeds
        self.refresh()

    # -- python-side mirror of the buffers (read on every forward, so no tensor syncs) ----------
    def refresh(self) -> None:
        """Re-read the buffers, e.g. after ``load_state_dict``."""
        self._states = [state_of(c) for c in self.seed_state.tolist()]
        self._alphas = [float(a) for a in self.seed_alpha.tolist()]
        self._disabled: set[int] = set()
        contributing = [i for i, s in enumerate(self._states) if s in _CONTRIBUTING and str(i) in self.kernels]
        # Depth blocks act on the layer's finished output, so they come after every side branch.
        self._contributing = sorted(contributing, key=lambda i: self.kinds.get(i) == DEPTH)
        self.grafting = [i for i, s in enumerate(self._states) if s is SeedState.GRAFTING]  # their alphas ramp

    def state(self, idx: int) -> SeedState:
        return self._states[idx]

    def set_state(self, idx: int, state: SeedState) -> None:
        self.seed_state[idx] = state_code(state)
        self.seed_epochs_in_state[idx] = 0
        self.refresh()

    def set_alpha(self, idx: int, alpha: float) -> None:
        self.seed_alpha[idx] = alpha
        self._alphas[idx] = float(alpha)

    def alpha(self, idx: int) -> float:
        return self._alphas[idx]

    @contextmanager
    def override_alpha(self, idx: int, alpha: float):
        """Evaluate the model with one seed's alpha forced (the counterfactual gate)."""
        self._alpha_override[idx] = alpha
        try:
            yield
        finally:
            self._alpha_override.pop(idx, None)

    # -- kernels ------------------------------------------------------------------------------
    def attach_kernel(self, idx: int, kernel: nn.Module, kind: str | None = None) -> None:
        device = self.host.weight.device
        self.kernels[str(idx)] = kernel.to(device)
        # In seed order, however they germinated: a checkpoint's optimizer state is matched to the
        # parameters by position, and a resumed run attaches its kernels in seed order.
        if list(self.kernels) != sorted(self.kernels, key=int):
            self.kernels = nn.ModuleDict(dict(sorted(self.kernels.items(), key=lambda item: int(item[0]))))
        self.kinds[idx] = kind
        self.refresh()

    def detach_kernel(self, idx: int) -> None:
        if str(idx) in self.kernels:
            del self.kernels[str(idx)]
        self.kinds.pop(idx, None)
        link = self.width_links.pop(idx, None)
        if link is not None:
            link.remove()
        self.refresh()

    def kernel(self, idx: int) -> nn.Module | None:
        return self.kernels[str(idx)] if str(idx) in self.kernels else None

    def take_failures(self) -> dict[int, str]:
        failures, self._failures = self._failures, {}
        return failures

    def _fail(self, idx: int, reason: str) -> None:
        self._disabled.add(idx)
        self._failures.setdefault(idx, reason)
        self.seed_errors[idx] += 1

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The isolated seed pass is not the host's forward: it neither counts nor samples.
        if self.training and not self.probe_training and self._clock.tick(self.sample_every) and self.collect_health:
            start = time.perf_counter()
            y = self.host(x)
            self.health.observe(y, time.perf_counter() - start)
            self.capacity.stage(x)
        else:
            y = self.host(x)
        if self.input_shape is None:
            self.input_shape, self.output_shape = list(x.shape[1:]), list(y.shape[1:])
        if not self._contributing:  # no seed can add to the output (dormant, germinated, culled): the host alone
            return y
        for idx in self._contributing:
            if idx in self._disabled:
                continue
            state = self._states[idx]
            training = state is SeedState.TRAINING
            if training and not self.probe_training:
                continue  # alpha 0: isolated from the host
            alpha = self._alpha_override.get(idx, 1.0 if training else self._alphas[idx])
            kind = self.kinds.get(idx)
            if kind == WIDTH and not alpha:
                continue  # the units add nothing: no need to make them
            source = y if kind == DEPTH else x
            try:
                out = self.kernels[str(idx)](source.detach() if training else source)
            except Exception as exc:  # a kernel is data we were given: it must not kill the run
                self._fail(idx, f"kernel raised {type(exc).__name__}: {exc}")
                continue
            wrong_shape = (out.shape[:1] + out.shape[2:] != y.shape[:1] + y.shape[2:]) if kind == WIDTH \
                else out.shape != y.shape
            if wrong_shape:
                self._fail(idx, f"kernel output shape {list(out.shape)} does not fit layer output {list(y.shape)}")
                continue
            if not bool(torch.isfinite(out).all()):
                self._fail(idx, "kernel produced non-finite values")
                continue
            if kind == WIDTH:
                link = self.width_links.get(idx)
                if link is not None:
                    link.pending = (out, alpha)  # the next layer's hook adds them
            elif alpha:
                y = y + out if alpha == 1.0 else y + alpha * out
        return y

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, layer_id={self.layer_id}, seeds={self.num_seeds}"
