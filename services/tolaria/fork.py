"""Forks: a new run that continues another run from its state at the end of one epoch, under a controller of its own.

``esper run --fork PARENT --at-epoch K`` loads the parent's checkpoint of epoch K (kept for the
last ``checkpoint_keep_epochs`` checkpointed epochs, ``checkpoint.keep_epoch``) and starts a new
run at epoch K + 1 whose configuration (and so whose session) records its lineage: the parent,
K and where the parent's log stood after epoch K. The checkpoint holds everything an epoch's
outcome depends on besides the commands a controller sends: weights, optimizer state, every
seed's kernel and lifecycle, the spent budget; the data order and torch's RNG are functions of
(seed, epoch) that every epoch sets afresh (``run._RunLoop._epoch``, ``Trainer.train_epoch``). So a
fork under the parent's controller that is sent the parent's commands retraces the parent.

The controller of a fork: the parent's (its ``--no-adapt``, its policy version, controller and
exploration) unless ``--no-adapt``, ``--policy VERSION`` or ``--controller`` says otherwise. Commands
the parent's controller had issued for epochs after K go with a fork that keeps that controller and are
dropped otherwise. ``budget``: the fork's germinations in all (a random baseline matched to a policy's).
Everything here is pure (checkpoint in, checkpoint out) but for reading the parent's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.core.errors import InputError
from services.tolaria.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    CheckpointStatus,
    checkpoint_path,
    epoch_checkpoint_path,
    kept_epochs,
    load_checkpoint,
    run_dir,
)
from services.tolaria.config import ForkOrigin, parse_config


class ForkError(InputError):
    """A fork that cannot be made (unknown run, epoch beyond it, checkpoint not kept), in one line."""


@dataclass(frozen=True)
class ForkRequest:
    parent_run_id: str
    at_epoch: int
    no_adapt: bool = False
    policy_version: str | None = None
    epochs: int | None = None  # the fork's last epoch + 1, as a config's ``epochs`` (default: the parent's)
    controller: str | None = None  # how Tamiyo chooses germinations (policy, heuristic, random; default: the parent's)
    exploration: float | None = None  # the policy's exploration (default: the parent's when it keeps its controller)
    budget: int | None = None  # germinations in all, the parent's included (default: the parent's budget)


def _span(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}..{epochs[-1]} ({len(epochs)})"


def check_fork_point(parent: CheckpointMeta, kept: list[int], at_epoch: int) -> None:
    """Refuse an epoch the parent never finished, one before a fork parent's own start, or one not kept."""
    run_id, cfg = parent.run_id, parent.config
    done = parent.next_epoch  # epochs 0 .. done - 1 have ended
    if at_epoch < 0:
        raise ForkError(f"--at-epoch must be 0 or more, not {at_epoch}")
    if at_epoch >= done:
        ended = f"epochs 0..{done - 1}" if done else "no epoch yet"
        raise ForkError(f"run {run_id} has ended {ended}; epoch {at_epoch} is beyond it")
    if cfg.fork is not None and at_epoch <= cfg.fork.epoch:
        raise ForkError(f"run {run_id} is a fork that starts after epoch {cfg.fork.epoch} of "
                        f"{cfg.fork.parent_run_id}; fork {cfg.fork.parent_run_id} at epoch {at_epoch} instead")
    if at_epoch in kept:
        return
    window = f"checkpoint_keep_epochs={cfg.checkpoint_keep_epochs}"
    if (at_epoch + 1) % cfg.checkpoint_every_epochs and at_epoch != cfg.epochs - 1:
        raise ForkError(f"run {run_id} wrote no checkpoint at the end of epoch {at_epoch} (checkpoint_every_epochs="
                        f"{cfg.checkpoint_every_epochs}); kept: {_span(kept)}")
    raise ForkError(f"the checkpoint of epoch {at_epoch} of run {run_id} has expired: kept {_span(kept)} ({window})")


def forked(parent: Checkpoint, run_id: str, request: ForkRequest) -> Checkpoint:
    """The parent's checkpoint of epoch K as the fork's starting point: same tensors, the fork's config and meta."""
    meta, cfg = parent.meta, parent.meta.config
    start = request.at_epoch + 1
    epochs = request.epochs if request.epochs is not None else cfg.epochs
    if epochs <= start:
        raise ForkError(f"--epochs {epochs} leaves nothing to train after epoch {request.at_epoch} "
                        f"(the fork trains epochs {start}..N-1: give --epochs {start + 1} or more)")
    keeps_controller = not request.no_adapt and request.policy_version is None and request.controller is None
    no_adapt = meta.no_adapt if keeps_controller else request.no_adapt
    policy = cfg.policy_version if keeps_controller else request.policy_version
    position = {f"{topic}:{partition}": offset for topic, parts in sorted(meta.log_positions.items())
                for partition, offset in sorted(parts.items())}
    origin = ForkOrigin(parent_run_id=meta.run_id, epoch=request.at_epoch, parent_log_position=position)
    controller = cfg.controller if keeps_controller else request.controller or "policy"
    exploration = request.exploration if request.exploration is not None else \
        cfg.exploration if keeps_controller else 0.0
    adaptation = cfg.adaptation.model_dump(mode="json") | (
        {"budget": request.budget} if request.budget is not None else {})
    config = parse_config({**cfg.model_dump(mode="json"), "epochs": epochs, "policy_version": policy,
                           "controller": controller, "exploration": exploration, "adaptation": adaptation,
                           "experiment": None, "fork": origin.model_dump(mode="json")}, "fork")
    fork_meta = meta.model_copy(update={
        "run_id": run_id, "config": config, "no_adapt": no_adapt, "next_epoch": start,
        "status": CheckpointStatus.RUNNING, "log_positions": {},  # the fork's own log starts empty
        "pending_commands": meta.pending_commands if keeps_controller else [],
    })
    return Checkpoint(parent.model, parent.optimizer, fork_meta)


def load_fork_point(state_dir: Path, run_id: str, request: ForkRequest) -> Checkpoint:
    """Check the request against the parent's files and return the fork's starting checkpoint."""
    parent_id = request.parent_run_id
    latest_path = checkpoint_path(state_dir, parent_id)
    if not latest_path.exists():
        raise ForkError(f"unknown run {parent_id}: no checkpoint in {run_dir(state_dir, parent_id)}")
    if checkpoint_path(state_dir, run_id).exists() or run_dir(state_dir, run_id).exists():
        raise ForkError(f"run {run_id} already exists; give the fork another --run-id")
    latest = load_checkpoint(latest_path)
    check_fork_point(latest.meta, kept_epochs(state_dir, parent_id), request.at_epoch)
    path = epoch_checkpoint_path(state_dir, parent_id, request.at_epoch)
    if not path.exists():  # pruned since the listing (the parent is still running)
        raise ForkError(f"the checkpoint of epoch {request.at_epoch} of run {parent_id} has expired")
    parent = load_checkpoint(path)
    if parent.meta.next_epoch != request.at_epoch + 1:  # the file's name and content must agree
        raise ForkError(f"{path} holds the state before epoch {parent.meta.next_epoch}, not after {request.at_epoch}")
    return forked(parent, run_id, request)
