"""The run configuration (YAML or JSON), validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts import BlueprintArchitecture
from contracts.policies import POLICY_VERSION_PATTERN
from services.core.config_files import read_document
from services.core.errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    dataset: Literal["digits", "spirals", "checkerboard", "parity", "folder"] = "digits"
    path: str | None = Field(default=None, description="folder with MNIST-style IDX files or data.npz (x, y)")
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    spiral_arms: int = Field(default=3, ge=2, le=10)
    spiral_points: int = Field(default=400, ge=20, description="points per arm")
    spiral_noise: float = Field(default=0.25, ge=0)
    checkerboard_cells: int = Field(default=4, ge=2, le=16, description="cells per side of the board")
    checkerboard_points: int = Field(default=600, ge=10, description="points per class")
    checkerboard_noise: float = Field(default=0.05, ge=0, le=1, description="jitter, in cell sides")
    parity_bits: int = Field(default=6, ge=2, le=16)
    parity_points: int = Field(default=600, ge=10, description="vectors per class")
    parity_noise: float = Field(default=0.3, ge=0, le=2, description="Gaussian noise added to each +-1 bit")

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataConfig:
        if self.dataset == "folder" and not self.path:
            raise ValueError("dataset 'folder' needs data.path")
        return self


class BranchConfig(_Strict):
    """A static side branch on a host layer: ``y = layer(x) + branch(x)``, trained from epoch 0.

    It is a fossilized seed's function without its lifecycle: what the ``static_final`` arm of an
    experiment builds from the adaptive arm's fossils (``services/tolaria/experiment_plan.py``).
    """

    layer: str = Field(min_length=1, max_length=255, description="module path of the host layer")
    architecture: BlueprintArchitecture


class BlockConfig(_Strict):
    """A static residual block after a host layer: ``y = y + block(y)``, trained from epoch 0.

    It is a fossilized depth seed's function without its lifecycle (``static_final``, like BranchConfig);
    the blocks of a layer apply after its side branches, in the order given, as the seed slot applies them.
    """

    layer: str = Field(min_length=1, max_length=255, description="module path of the host layer")
    architecture: BlueprintArchitecture


class ModelConfig(_Strict):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [16], description="mlp: hidden widths")
    channels: list[int] = Field(default_factory=lambda: [8, 16], description="cnn: conv channels")
    branches: list[BranchConfig] = Field(default_factory=list, description="static side branches on host layers")
    blocks: list[BlockConfig] = Field(default_factory=list, description="static residual blocks after host layers")


class SeedsConfig(_Strict):
    target_layers: list[str] = Field(default_factory=lambda: ["body.0"], description="module paths")
    per_layer: int = Field(default=2, ge=1, le=64)


class OptimizerConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)


class ScheduleConfig(_Strict):
    kind: Literal["constant", "cosine", "step"] = "constant"
    step_epochs: int = Field(default=10, ge=1)
    gamma: float = Field(default=0.5, gt=0, le=1)


class AdaptationConfig(_Strict):
    enabled: bool = True
    budget: int = Field(default=4, ge=0, description="max germinations in the run")
    cooldown_epochs: int = Field(default=0, ge=0, description="min epochs between germinations")
    training_epochs: int = Field(default=2, ge=1)
    grafting_steps: int = Field(default=50, ge=1)
    embargo_epochs: int = Field(default=2, ge=0)
    min_contribution: float = Field(
        default=0.0, description="counterfactual gate threshold: validation loss without the seed minus with it (nats)")
    auto_advance: bool = True
    kernel_wait_s: float = Field(default=15.0, ge=0, description="how long to wait for a kernel in the library")
    controller_wait_s: float = Field(
        default=0.0, ge=0,
        description="at each boundary, wait up to this long for the controller's decision on the previous epoch "
                    "(0: never wait; after one timeout the run stops waiting)",
    )


class TelemetryConfig(_Strict):
    sample_every_steps: int = Field(default=4, ge=1, description="health statistics on every n-th step")
    every_epochs: int = Field(default=1, ge=1, description="publish HealthSignals every n epochs (and at the end)")


ARMS = ("adaptive", "no_adapt", "static_final", "static_width", "gromo")
DEFAULT_ARMS = ARMS[:4]  # gromo (a peer package) is opt-in: `--arms ... gromo`


class ExperimentTag(_Strict):
    """Set by ``esper experiment`` on each arm's run: which experiment and arm the run is (its session says so)."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,56}$")
    arm: Literal["adaptive", "no_adapt", "static_final", "static_width", "gromo"]


class PeerGrowthConfig(_Strict):
    """Set by ``esper experiment`` on its ``gromo`` arm: the MLP host is gromo's GrowingMLP, grown by gromo's
    ``method`` at the start of ``steps`` epochs (default: every epoch) in the first ``fraction`` of the run, up to
    ``target_parameters`` (the adaptive arm's final count of the same seed). ``services/peers/`` holds the code."""

    package: Literal["gromo"] = "gromo"
    method: Literal["tiny", "gradmax"] = "tiny"
    target_parameters: int = Field(ge=1)
    steps: int | None = Field(default=None, ge=1)
    fraction: float = Field(default=0.5, gt=0, le=1)


class ForkOrigin(_Strict):
    """Set by ``esper run --fork``, not by hand: the run this one continues, and from where (its session says so)."""

    parent_run_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$")
    epoch: int = Field(ge=0, description="the parent's epoch at whose end the fork starts")
    parent_log_position: dict[str, int] = Field(
        default_factory=dict, description="topic:partition -> the parent's end offset after that epoch's events")


class RunConfig(_Strict):
    name: str = Field(default="run", min_length=1, max_length=100)
    description: str = Field(default="an Esper run", min_length=1, max_length=1000)
    seed: int = Field(default=0, ge=0)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    checkpoint_every_epochs: int = Field(default=1, ge=1)
    checkpoint_keep_epochs: int = Field(
        default=10, ge=0,
        description="per-epoch checkpoints kept for `esper run --fork` (the last N checkpointed epochs; 0: none)",
    )
    policy_version: str | None = Field(
        default=None, pattern=POLICY_VERSION_PATTERN,
        description="the Tamiyo policy version this run asks for (`esper policy list`; None: the promoted one)",
    )
    controller: Literal["policy", "heuristic", "random"] = Field(
        default="policy", description="how Tamiyo chooses germinations: the policy, the teacher's heuristic rule, or "
                                      "random slot, kernel and epoch (as many as the budget left at the start)")
    exploration: float = Field(default=0.0, ge=0, le=1,
                               description="policy controller: chance per epoch of a random germination (explored)")
    fork: ForkOrigin | None = Field(default=None, description="set by `esper run --fork`, not by hand")
    experiment: ExperimentTag | None = Field(default=None, description="set by `esper experiment`, not by hand")
    peer_growth: PeerGrowthConfig | None = Field(default=None, description="set by `esper experiment`'s gromo arm")


class ConfigError(InputError):
    """An invalid run configuration, described in one line."""


def load_config(path: str | Path) -> RunConfig:
    try:
        raw = read_document(path)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    return parse_config(raw or {}, str(path))


def parse_config(raw: object, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {first['msg']}{more}") from None
