"""The one seed identity, ``(layer_id, seed_idx)``, and stable layer ids."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, model_validator

from contracts._base import Contract


def validate_seed_id(v: Any) -> tuple[int, int]:
    """Validate a seed identity given as a 2-tuple ``(layer_id, seed_idx)``.

    Raises TypeError for non-int members (bools included) and ValueError for a
    wrong shape or negative values.
    """
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"seed id must be a 2-tuple (layer_id, seed_idx), got {v!r}")
    layer_id, seed_idx = v
    for name, part in (("layer_id", layer_id), ("seed_idx", seed_idx)):
        if isinstance(part, bool) or not isinstance(part, int):
            raise TypeError(f"seed id {name} must be an int, got {type(part).__name__}")
        if part < 0:
            raise ValueError(f"seed id {name} must be >= 0, got {part}")
    return (layer_id, seed_idx)


def layer_id_for_path(module_path: str) -> int:
    """Layer id derived from a module path, identical in every process.

    The original used ``hash(name) % N``, which Python salts per process. A
    31-bit slice of BLAKE2b of the dotted path is stable and fits Avro's int.
    """
    if not module_path:
        raise ValueError("module path must not be empty")
    digest = hashlib.blake2b(module_path.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class SeedId(Contract):
    """A seed slot: the ``seed_idx``-th seed of the layer ``layer_id``."""

    model_config = Contract.model_config | {"frozen": True}

    layer_id: int = Field(ge=0, description="Stable id of the host layer (layer_id_for_path)")
    seed_idx: int = Field(ge=0, description="Index of the seed within its layer")

    @model_validator(mode="before")
    @classmethod
    def _from_tuple(cls, data: Any) -> Any:
        if isinstance(data, (tuple, list)):
            layer_id, seed_idx = validate_seed_id(data)
            return {"layer_id": layer_id, "seed_idx": seed_idx}
        return data

    def as_tuple(self) -> tuple[int, int]:
        return (self.layer_id, self.seed_idx)

    def __str__(self) -> str:
        return f"{self.layer_id}:{self.seed_idx}"
