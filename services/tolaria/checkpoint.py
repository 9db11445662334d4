"""Weights-only checkpoints: model and optimizer tensors plus typed, versioned JSON metadata, written atomically.

Loaded with ``torch.load(weights_only=True)``: nothing in a checkpoint can run code. The metadata
is a ``CheckpointMeta`` stored as a JSON string under ``"meta"``. Version 1 is the layout Tolaria
has always written (files from before the field existed carry no ``version`` and read as 1); a
later layout adds a version and a migration from the ones before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from services.core.errors import EsperError
from services.tolaria.config import RunConfig

if TYPE_CHECKING:
    from services.oona.consumer import Delivered

CHECKPOINT_VERSION: Final = 1
_EPOCH_FILE: Final = re.compile(r"^epoch-(\d{6})\.pt$")


class CheckpointError(EsperError):
    pass


class CheckpointStatus(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetRecord(_Record):
    """The adaptation budget spent so far (``AdaptationBudget`` without its configuration)."""

    germinations: int
    last_germination_epoch: int | None
    applied: list[str]  # ids of the commands applied, so that a resumed run never applies one twice


class PendingCommand(_Record):
    """A consumed command due at a later epoch: its record, bytes as hex, so it is decoded again on resume."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str

    @classmethod
    def of(cls, delivered: Delivered) -> PendingCommand:
        return cls(topic=delivered.topic, partition=delivered.partition, offset=delivered.offset,
                   key=delivered.key.hex() if delivered.key is not None else None, value=delivered.value.hex())

    @property
    def key_bytes(self) -> bytes | None:
        return bytes.fromhex(self.key) if self.key is not None else None

    @property
    def value_bytes(self) -> bytes:
        return bytes.fromhex(self.value)


class CheckpointMeta(_Record):
    """Everything besides tensors that a resumed run needs to go on exactly where the checkpoint was taken."""

    version: Literal[1] = CHECKPOINT_VERSION
    run_id: str
    config: RunConfig
    no_adapt: bool
    next_epoch: int
    status: CheckpointStatus
    kernels: str  # ``SeedManager.kernel_records()``: JSON, rebuilt before the weights are loaded
    budget: BudgetRecord
    log_positions: dict[str, dict[int, int]]  # topic -> partition -> end offset after the last flush
    pending_commands: list[PendingCommand]

    def to_json(self) -> str:
        # sort_keys: the same metadata always makes the same bytes, as it did before the model existed.
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


@dataclass(frozen=True)
class Checkpoint:
    model: dict[str, Any]
    optimizer: dict[str, Any]
    meta: CheckpointMeta


def run_dir(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "runs" / run_id


def checkpoint_path(state_dir: Path, run_id: str) -> Path:
    return run_dir(state_dir, run_id) / "checkpoint.pt"


def epoch_checkpoint_path(state_dir: Path, run_id: str, epoch: int) -> Path:
    """Where the run's state at the end of ``epoch`` is kept for forks (``checkpoint_keep_epochs``)."""
    return run_dir(state_dir, run_id) / "epochs" / f"epoch-{epoch:06d}.pt"


def kept_epochs(state_dir: Path, run_id: str) -> list[int]:
    """The epochs whose end state the run keeps, in order."""
    folder = run_dir(state_dir, run_id) / "epochs"
    if not folder.is_dir():
        return []
    found = (_EPOCH_FILE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def expired_epochs(kept: list[int], latest: int, window: int) -> list[int]:
    """The kept epochs outside the window: the ``window`` checkpointed epochs up to ``latest`` stay."""
    inside = sorted(e for e in kept if e <= latest)[-window:] if window > 0 else []
    return [e for e in kept if e not in inside and e <= latest]


def keep_epoch(state_dir: Path, run_id: str, epoch: int, window: int) -> None:
    """Keep the checkpoint just written as the state at the end of ``epoch``; drop what left the window.

    A hard link: ``save_checkpoint`` replaces ``checkpoint.pt`` by a new file, so the link keeps this
    epoch's bytes at no cost of space or time (a copy where links are not possible).
    """
    if window <= 0:
        return
    source = checkpoint_path(state_dir, run_id)
    target = epoch_checkpoint_path(state_dir, run_id, epoch)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    for old in expired_epochs(kept_epochs(state_dir, run_id), epoch, window):
        epoch_checkpoint_path(state_dir, run_id, old).unlink(missing_ok=True)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": checkpoint.model, "optimizer": checkpoint.optimizer, "meta": checkpoint.meta.to_json()}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves either the old checkpoint or the new one, never half of one


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from None
    try:
        raw = json.loads(data["meta"])
        version = raw.get("version", 1)
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {path} has version {version}; this Esper reads {CHECKPOINT_VERSION}")
        meta = CheckpointMeta.model_validate(raw)
        return Checkpoint(model=data["model"], optimizer=data["optimizer"], meta=meta)
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, ValidationError) as exc:
        detail = " ".join(str(exc).split())[:500]  # one line: a pydantic error spans several
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {type(exc).__name__}: {detail}") from None
