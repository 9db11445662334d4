"""Applying Kasmina commands at an epoch boundary; what cannot be applied is rejected with a reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contracts import CommandAction, FieldReport, KasminaCommand, SeedId, SeedState, SeedTransition
from contracts.blueprint_ir import DEPTH
from services.blueprints.artifacts import ArtifactError
from services.core.errors import EsperError
from services.kasmina.growth import fits_slot
from services.kasmina.lifecycle import IllegalTransitionError
from services.kasmina.seed_manager import Evaluate, Evaluation, GradientProbe, KernelInfo, SeedManager
from services.kasmina.seed_slot import KasminaError
from services.urza.kernel_library import KernelLibrary, KernelNotFoundError


class CommandRejected(EsperError, ValueError):
    """The command is well-formed but cannot be applied; it goes to the DLQ with this reason."""


@dataclass
class AdaptationBudget:
    enabled: bool
    budget: int
    cooldown_epochs: int
    germinations: int = 0
    last_germination_epoch: int | None = None
    applied: list[str] = field(default_factory=list)

    def check_germination(self, epoch: int) -> None:
        if not self.enabled:
            raise CommandRejected("adaptation is disabled for this run (--no-adapt)")
        if self.germinations >= self.budget:
            raise CommandRejected(f"adaptation budget exhausted ({self.budget} germinations)")
        if self.last_germination_epoch is not None and epoch - self.last_germination_epoch < self.cooldown_epochs:
            raise CommandRejected(
                f"cooldown: last germination at epoch {self.last_germination_epoch}, "
                f"{self.cooldown_epochs} epochs must pass"
            )


class CommandApplier:
    def __init__(self, manager: SeedManager, library: KernelLibrary | None, budget: AdaptationBudget,
                 kernel_wait_s: float, on_parameters_changed: Callable[[], None],
                 gradient_probe: GradientProbe | None = None) -> None:
        self.manager = manager
        self.gradient_probe = gradient_probe  # a width seed's GradMax fan-in reads the loss's gradients
        self.library = library
        self.budget = budget
        self.kernel_wait_s = kernel_wait_s
        self.on_parameters_changed = on_parameters_changed

    def apply(self, command: KasminaCommand, epoch: int, evaluate: Evaluate, current: Evaluation
              ) -> tuple[list[SeedTransition], list[FieldReport]]:
        seed = SeedId(layer_id=command.layer_id, seed_idx=command.seed_idx)
        try:
            self.manager.slot(seed)
            if command.action == CommandAction.GERMINATE:
                result = self._germinate(command, seed, epoch, current.accuracy)
            elif command.action == CommandAction.CULL:
                result = self.manager.cull(seed, epoch, f"commanded ({command.command_id})",
                                           command_id=command.command_id, metric=current.accuracy)
            elif command.action == CommandAction.ADVANCE and self.manager.state(seed) is SeedState.TRAINING:
                result = (self.manager.advance(seed, epoch, "commanded", command.command_id), [])
            elif command.action in (CommandAction.ADVANCE, CommandAction.FOSSILIZE):
                if self.manager.state(seed) is not SeedState.GRAFTING:
                    raise IllegalTransitionError(self.manager.state(seed), SeedState.FOSSILIZED, str(seed))
                result = self.manager.fossilize_gate(seed, epoch, evaluate, current, command.command_id)
            else:  # pragma: no cover - the enum is closed
                raise CommandRejected(f"unknown action {command.action}")
        except (KasminaError, IllegalTransitionError) as exc:
            raise CommandRejected(str(exc)) from None
        self.budget.applied.append(command.command_id)
        self.on_parameters_changed()
        return result

    def _germinate(self, command: KasminaCommand, seed: SeedId, epoch: int, current: float
                   ) -> tuple[list[SeedTransition], list[FieldReport]]:
        self.budget.check_germination(epoch)
        state = self.manager.state(seed)
        if state is not SeedState.DORMANT:
            raise IllegalTransitionError(state, SeedState.GERMINATED, str(seed))
        if self.library is None:
            raise CommandRejected("no kernel library is available to this run")
        if not command.kernel_id and not command.blueprint_id:
            raise CommandRejected("germinate needs a kernel_id or a blueprint_id")
        try:
            kernel = self.library.find(command.kernel_id, command.blueprint_id, self.kernel_wait_s)
            slot = self.manager.slot(seed)
            # The module is built from the architecture, so that is what must fit the slot (the metadata
            # is checked to agree with it when the library takes the entry).
            arch = kernel.architecture
            if arch is None:
                raise CommandRejected(f"kernel {kernel.kernel_id} carries no blueprint architecture")
            if not fits_slot(arch, slot):
                needs = f"{slot.output_shape} -> {slot.output_shape} (a depth block)" if arch.kind == DEPTH \
                    else f"{slot.input_shape} -> {slot.output_shape}"
                raise CommandRejected(
                    f"kernel {kernel.kernel_id} maps {arch.input_shape} -> {arch.output_shape}, "
                    f"slot {slot.layer_name} needs {needs}"
                )
            module = self.library.load_module(kernel)  # content addresses verified, IR checked before building
        except (KernelNotFoundError, ArtifactError) as exc:
            raise CommandRejected(str(exc)) from None
        info = KernelInfo(kernel.kernel_id, kernel.blueprint_id, arch)
        result = self.manager.germinate(seed, module, info, epoch, current, command.command_id, self.gradient_probe)
        self.budget.germinations += 1
        self.budget.last_germination_epoch = epoch
        return result
