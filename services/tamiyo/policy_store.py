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

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from services.core.errors import EsperError
from services.core.paths import INITIAL_POLICY
from services.tamiyo.decider import FAMILIES
from services.tamiyo.features import FEATURES
from services.tamiyo.policy import TamiyoPolicy


class PolicyError(EsperError):
    """A policy file that cannot be used (missing, corrupt, or built for other features)."""


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
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(directory / f"{stem}.safetensors"), metadata={"version": version})
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
    if record.features != list(FEATURES) or record.families != list(FAMILIES):
        raise PolicyError(f"policy {path} was built for other features or blueprint families; retrain it")
    try:
        state = load_file(str(weights_path))
    except FileNotFoundError:
        raise PolicyError(f"policy {path}: {weights_path.name} not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolicyError(f"policy {path}: corrupt weights ({exc})") from None
    policy = TamiyoPolicy(len(FEATURES), hidden=record.hidden, layers=record.layers, blueprints=len(FAMILIES))
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise PolicyError(f"policy {path}: weights do not match its metadata ({str(exc).splitlines()[0]})") from None
    if policy.version() != record.version:
        raise PolicyError(f"policy {path}: weights hash to {policy.version()}, metadata says {record.version}")
    policy.eval()
    return policy, record
