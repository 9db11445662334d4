"""Policies as versioned artifacts: weights in safetensors (no pickle), metadata in JSON beside them.

    <dir>/<version>.safetensors   the state dict
    <dir>/<version>.json          PolicyRecord: version, architecture, feature and family names, provenance

The version is a content hash of the weights (``TamiyoPolicy.version``), so the same weights
always carry the same version and every decision names the exact policy that made it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load, save
from torch import Tensor

from services.core.errors import EsperError
from services.core.paths import INITIAL_POLICY
from services.tamiyo.decider import FAMILIES
from services.tamiyo.features import FEATURES
from services.tamiyo.policy import TamiyoPolicy


class PolicyError(EsperError):
    """A policy that cannot be used (missing, corrupt, built for other features, or not what its record declares)."""


class PolicyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    hidden: int = Field(ge=1)
    layers: int = Field(ge=1)
    features: list[str]
    families: list[str]
    created_at: str
    trained_on: str = Field(description="What it learned from: synthetic teacher, or the run ids")
    metrics: dict[str, float] = Field(default_factory=dict)


def save_policy(policy: TamiyoPolicy, directory: Path, trained_on: str, metrics: dict[str, float] | None = None,
                name: str | None = None) -> Path:
    """Write weights + metadata; returns the JSON path. ``name`` defaults to the version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    version = policy.version()
    record = PolicyRecord(
        version=version, hidden=policy.hidden, layers=len(policy.layers), features=list(FEATURES),
        families=list(FAMILIES), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        trained_on=trained_on, metrics=metrics or {},
    )
    stem = name or version
    (directory / f"{stem}.safetensors").write_bytes(policy_artifact(policy))
    path = directory / f"{stem}.json"
    path.write_text(record.model_dump_json(indent=2) + "\n")
    return path


def load_policy(path: str | Path = INITIAL_POLICY) -> tuple[TamiyoPolicy, PolicyRecord]:
    """Load a policy from its JSON record (or its .safetensors file); PolicyError in one line if unusable."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    weights_path = path.with_suffix(".safetensors")
    try:
        record = PolicyRecord.model_validate(json.loads(meta_path.read_text()))
    except FileNotFoundError:
        raise PolicyError(f"policy {path}: {meta_path.name} not found") from None
    except (ValueError, ValidationError) as exc:
        raise PolicyError(f"policy {path}: corrupt metadata ({str(exc).splitlines()[0]})") from None
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy {path}: {weights_path.name} not found") from None
    except OSError as exc:
        raise PolicyError(f"policy {path}: corrupt weights ({exc})") from None
    policy = policy_from_artifact(data, version=record.version, hidden=record.hidden, layers=record.layers,
                                  features=record.features, families=record.families, where=f"policy {path}")
    return policy, record


def policy_artifact(policy: TamiyoPolicy) -> bytes:
    """The policy's weights as safetensors bytes (named raw tensors: nothing in them is executed on loading)."""
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    return save(state, metadata={"version": policy.version()})


def policy_from_artifact(data: bytes, *, version: str, hidden: int, layers: int, features: list[str],
                         families: list[str], where: str) -> TamiyoPolicy:
    """The policy whose weights are ``data`` (safetensors bytes, from a file or off the bus), checked against the
    declared architecture and version before it is believed; PolicyError (one line, prefixed ``where``) if not."""
    if features != list(FEATURES) or families != list(FAMILIES):
        raise PolicyError(f"{where} was built for other features or blueprint families; retrain it")
    try:
        state = load(bytes(data))
    except Exception as exc:  # whatever the parser of untrusted bytes raised: a reason, never a crash
        raise PolicyError(f"{where}: corrupt weights ({type(exc).__name__}: {str(exc)[:200]})") from None
    policy = TamiyoPolicy(len(FEATURES), hidden=hidden, layers=layers, blueprints=len(FAMILIES))
    problem = _architecture_problem(policy.state_dict(), state)
    if problem is not None:
        raise PolicyError(f"{where}: weights do not match its declared architecture "
                          f"(hidden {hidden}, {layers} layers): {problem}")
    policy.load_state_dict(state)
    if policy.version() != version:
        raise PolicyError(f"{where}: weights hash to {policy.version()}, metadata says {version}")
    policy.eval()
    return policy


def _architecture_problem(expected: dict[str, Tensor], got: dict[str, Tensor]) -> str | None:
    """Why ``got`` is not a state dict of the declared architecture (names, shapes, float32, finite), or None."""
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for name, tensor in expected.items():
        value = got[name]
        if value.shape != tensor.shape or value.dtype != tensor.dtype:
            return f"{name} is {value.dtype} {list(value.shape)}, expected {tensor.dtype} {list(tensor.shape)}"
        if not bool(torch.isfinite(value).all()):
            return f"{name} holds non-finite values"
    return None
