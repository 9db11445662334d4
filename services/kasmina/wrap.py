"""Put seed slots into a model at given module paths (nested paths included)."""

from __future__ import annotations

from torch import nn

from services.kasmina.capacity import attach_capacity_probes
from services.kasmina.seed_slot import KasminaError, SeedSlot


def seedable_layers(model: nn.Module) -> list[str]:
    """Module paths that can hold a seed slot (Linear and Conv2d)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]


def wrap_layers(model: nn.Module, paths: list[str], seeds_per_layer: int, sample_every: int = 4) -> dict[str, SeedSlot]:
    """Replace each module at ``paths`` by a SeedSlot around it; returns the slots by path, in module order."""
    available = seedable_layers(model)
    unknown = [p for p in paths if p not in available]
    if unknown:
        raise KasminaError(f"unknown layer path(s) {', '.join(unknown)}; seedable layers: {', '.join(available)}")
    if len(set(paths)) != len(paths):
        raise KasminaError("each target layer may be listed once")
    slots: dict[str, SeedSlot] = {}
    for path in sorted(paths, key=available.index):  # data-flow order of the host's modules
        host = model.get_submodule(path)
        slot = SeedSlot(host, path, seeds_per_layer, sample_every)
        model.set_submodule(path, slot)
        slots[path] = slot
    attach_capacity_probes(model, {path: slot.capacity for path, slot in slots.items()})
    return slots
