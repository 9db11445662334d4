"""Weights-only checkpoints: model and optimizer tensors plus JSON metadata, written atomically.

Loaded with ``torch.load(weights_only=True)``: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from services.core.errors import EsperError


class CheckpointError(EsperError):
    pass


def run_dir(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "runs" / run_id


def checkpoint_path(state_dir: Path, run_id: str) -> Path:
    return run_dir(state_dir, run_id) / "checkpoint.pt"


def save_checkpoint(path: Path, model_state: dict, optimizer_state: dict, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model_state, "optimizer": optimizer_state, "meta": json.dumps(meta, sort_keys=True)}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves either the old checkpoint or the new one, never half of one


def load_checkpoint(path: Path) -> tuple[dict, dict, dict[str, Any]]:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from None
    return data["model"], data["optimizer"], json.loads(data["meta"])
