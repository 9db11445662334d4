"""Lifecycle mechanics of every seed in a model: transitions, gates, grafting, embargo.

Pure with respect to Kafka: every method returns the contract events it caused
(SeedTransition, FieldReport); Tolaria publishes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from contracts import (
    BlueprintArchitecture,
    FieldReport,
    FieldReportOutcome,
    GateResult,
    HealthSignal,
    SeedId,
    SeedState,
    SeedTransition,
)
from contracts.blueprint_ir import WIDTH, seed_output_shape
from services.blueprints.artifacts import probe
from services.kasmina.growth import (
    WidthLink,
    WidthSeed,
    find_consumer,
    fits_slot,
    gradmax_fan_in,
    make_width_seed,
    merge_width,
    widen_for_resume,
)
from services.kasmina.lifecycle import ACTIVE, CULLABLE, HAS_KERNEL, check_transition
from services.kasmina.seed_slot import KasminaError, SeedSlot

# A loss on one batch of training data, computed through the model (GradMax reads its gradients).
GradientProbe = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """The model on the validation split: mean cross-entropy and accuracy."""

    loss: float
    accuracy: float


# The model's validation loss and accuracy now (the fossilization gate evaluates with and without a seed).
Evaluate = Callable[[], Evaluation]


@dataclass(frozen=True)
class LifecycleSettings:
    training_epochs: int = 2  # TRAINING -> GRAFTING after this many epochs (when auto_advance)
    # True: Kasmina advances and fossilizes seeds itself. False: a controller (Tamiyo) commands
    # ADVANCE and FOSSILIZE when the health signals say a seed is ready; the gates still decide.
    grafting_steps: int = 50  # optimizer steps for alpha to ramp 0 -> 1
    embargo_epochs: int = 2  # CULLED -> DORMANT after this many epochs
    # The counterfactual gate: the validation loss without the seed minus with it (nats) must exceed this.
    min_contribution: float = 0.0
    auto_advance: bool = True


@dataclass(frozen=True)
class KernelInfo:
    kernel_id: str
    blueprint_id: str
    architecture: BlueprintArchitecture
    merged: bool = False  # a fossilized width seed whose units are now the host's


class SeedManager:
    def __init__(self, slots: dict[str, SeedSlot], settings: LifecycleSettings, model: nn.Module) -> None:
        self.slots = slots
        self.model = model  # width seeds find the layer their units feed in it
        self.settings = settings
        self._by_layer = {slot.layer_id: slot for slot in slots.values()}
        if len(self._by_layer) != len(slots):
            raise KasminaError("two target layers map to the same layer id")
        self.kernel_info: dict[SeedId, KernelInfo] = {}

    # -- lookup ---------------------------------------------------------------------------
    def seed_ids(self) -> Iterator[SeedId]:
        for slot in self.slots.values():
            for idx in range(slot.num_seeds):
                yield SeedId(layer_id=slot.layer_id, seed_idx=idx)

    def slot(self, seed: SeedId) -> SeedSlot:
        slot = self._by_layer.get(seed.layer_id)
        if slot is None or seed.seed_idx >= slot.num_seeds:
            layers = ", ".join(f"{s.layer_name}={s.layer_id}" for s in self.slots.values())
            raise KasminaError(f"unknown seed {seed} (layers: {layers})")
        return slot

    def state(self, seed: SeedId) -> SeedState:
        return self.slot(seed).state(seed.seed_idx)

    def counts(self) -> dict[SeedState, int]:
        counts = {state: 0 for state in SeedState}
        for seed in self.seed_ids():
            counts[self.state(seed)] += 1
        return counts

    def active_count(self) -> int:
        return sum(1 for s in self.seed_ids() if self.state(s) in ACTIVE)

    # -- transitions ------------------------------------------------------------------------
    def _move(self, seed: SeedId, to: SeedState, epoch: int, reason: str, *, command_id: str | None = None,
              gates: list[GateResult] | None = None) -> SeedTransition:
        slot = self.slot(seed)
        frm = slot.state(seed.seed_idx)
        check_transition(frm, to, str(seed))
        slot.set_state(seed.seed_idx, to)
        info = self.kernel_info.get(seed)
        return SeedTransition(
            layer_id=seed.layer_id, seed_idx=seed.seed_idx, layer_name=slot.layer_name, from_state=frm, to_state=to,
            epoch=epoch, reason=reason, command_id=command_id, kernel_id=info.kernel_id if info else None,
            gates=gates or [],
        )

    def germinate(self, seed: SeedId, kernel: nn.Module, info: KernelInfo, epoch: int, pre_metric: float,
                  command_id: str | None = None, gradient_probe: GradientProbe | None = None
                  ) -> tuple[list[SeedTransition], list[FieldReport]]:
        """Load ``kernel`` into a dormant seed; a kernel that fails its probe is culled at once.

        A width seed gets its zero fan-out here and, given ``gradient_probe``, a GradMax fan-in.
        """
        slot = self.slot(seed)
        check_transition(slot.state(seed.seed_idx), SeedState.GERMINATED, str(seed))
        idx = seed.seed_idx
        kind = info.architecture.kind
        self._check_room(slot, idx, kind)
        link = None
        if kind == WIDTH:
            kernel, link = self._width_seed(slot, idx, kernel, gradient_probe)
        slot.attach_kernel(idx, kernel, kind)
        if link is not None:
            slot.width_links[idx] = link
        self.kernel_info[seed] = info
        digest = hashlib.sha256(info.kernel_id.encode()).digest()[:16]
        slot.seed_kernel_digest[idx] = torch.tensor(list(digest), dtype=torch.uint8)
        slot.seed_pre_metric[idx] = pre_metric
        slot.seed_germinated_epoch[idx] = epoch
        slot.set_alpha(idx, 0.0)
        events = [self._move(seed, SeedState.GERMINATED, epoch, "kernel loaded", command_id=command_id)]
        gate = self._probe_gate(slot, kernel, info.architecture)
        if gate.passed:
            events.append(
                self._move(seed, SeedState.TRAINING, epoch, "kernel probe passed", command_id=command_id, gates=[gate])
            )
            return events, []
        cull_events, reports = self.cull(
            seed, epoch, "kernel probe failed", command_id=command_id, gates=[gate], metric=pre_metric
        )
        return events + cull_events, reports

    def _probe_gate(self, slot: SeedSlot, kernel: nn.Module, arch: BlueprintArchitecture) -> GateResult:
        try:
            out = probe(kernel, arch.input_shape, batch=4) if slot.input_shape and fits_slot(arch, slot) else None
            ok = out is not None and list(out.shape[1:]) == seed_output_shape(arch) \
                and bool(torch.isfinite(out).all())
        except Exception:
            ok = False
        return GateResult(name="kernel_probe", passed=ok, value=1.0 if ok else 0.0, threshold=1.0)

    def _width_links(self) -> dict[str, str]:
        """Layer path -> the live width seed whose producer or consumer it is."""
        busy = {}
        for slot in self.slots.values():
            for idx, link in slot.width_links.items():
                assert isinstance(link, WidthLink)
                busy[slot.layer_name] = busy[link.consumer.path] = f"{slot.layer_id}:{idx}"
        return busy

    def _check_room(self, slot: SeedSlot, idx: int, kind: str | None) -> None:
        """A layer being widened takes no other seed, and a width seed needs its two layers to itself."""
        busy = self._width_links()
        if slot.layer_name in busy:
            raise KasminaError(f"{slot.layer_name} is being widened by seed {busy[slot.layer_name]}; "
                               "it takes no other seed until that one is fossilized or culled")
        if kind != WIDTH:
            return
        consumer = find_consumer(self.model, slot)
        if consumer.path in busy:
            raise KasminaError(f"{consumer.path} is being widened by seed {busy[consumer.path]}")
        for other in (slot, consumer.slot):
            if other is not None and any(other.kernel(i) is not None for i in range(other.num_seeds) if
                                         not (other is slot and i == idx)):
                raise KasminaError(f"{other.layer_name} holds other seeds, which would not fit its new width")

    def _width_seed(self, slot: SeedSlot, idx: int, fan_in: nn.Module, gradient_probe: GradientProbe | None
                    ) -> tuple[WidthSeed, WidthLink]:
        width_seed, consumer = make_width_seed(self.model, slot, fan_in)
        if gradient_probe is not None and slot.input_shape is not None:
            captured: dict[str, torch.Tensor] = {}
            hooks = [
                slot.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0].detach())),
                consumer.layer.register_forward_hook(lambda m, args, out: captured.__setitem__("out", out)),
            ]
            try:
                loss = gradient_probe()
            finally:
                for hook in hooks:
                    hook.remove()
            gradmax_fan_in(slot, width_seed, consumer, loss, captured)
        return width_seed, WidthLink(slot, idx, width_seed, consumer)

    def cull(
        self,
        seed: SeedId,
        epoch: int,
        reason: str,
        *,
        command_id: str | None = None,
        gates: list[GateResult] | None = None,
        metric: float = 0.0,
    ) -> tuple[list[SeedTransition], list[FieldReport]]:
        slot = self.slot(seed)
        state = slot.state(seed.seed_idx)
        if state not in CULLABLE:
            check_transition(state, SeedState.CULLED, str(seed))  # raises with the allowed moves
        event = self._move(seed, SeedState.CULLED, epoch, reason, command_id=command_id, gates=gates)
        report = self._field_report(seed, epoch, metric, FieldReportOutcome.CULLED)
        slot.detach_kernel(seed.seed_idx)
        slot.set_alpha(seed.seed_idx, 0.0)
        slot.seed_embargo_left[seed.seed_idx] = self.settings.embargo_epochs
        return [event], [report]

    def advance(self, seed: SeedId, epoch: int, reason: str, command_id: str | None = None) -> list[SeedTransition]:
        """TRAINING -> GRAFTING (alpha starts its ramp)."""
        slot = self.slot(seed)
        event = self._move(seed, SeedState.GRAFTING, epoch, reason, command_id=command_id)
        slot.seed_graft_step[seed.seed_idx] = 0
        slot.seed_graft_total[seed.seed_idx] = max(1, self.settings.grafting_steps)
        slot.set_alpha(seed.seed_idx, 0.0)
        return [event]

    def fossilize_gate(self, seed: SeedId, epoch: int, evaluate: Evaluate, current: Evaluation,
                       command_id: str | None = None) -> tuple[list[SeedTransition], list[FieldReport]]:
        """GRAFTING -> FOSSILIZED if the model's validation loss is lower with the seed than without, else CULLED.

        The counterfactual is the same model with the seed at alpha 0 (a side branch or depth block adds
        nothing; a width seed's units feed nothing into the next layer: its consumer columns are gone too).
        It is judged on the validation *loss*, not accuracy: a seed that is still young when its ramp ends
        (a width seed's fan-out starts at zero and has had ``grafting_steps`` of joint training) moves the
        model's outputs towards the labels long before it moves enough argmaxes to change the accuracy of
        a few hundred validation samples by one sample, and a host near chance (an under-capacity one:
        exactly where growth is wanted) turns accuracy into a coin flip per sample. The cross-entropy sees
        every sample's margin, so a seed that helps reads positive however small its effect yet, and one
        that hurts or overfits (held-out data) reads negative. The accuracy contribution is still reported
        (the field report's ``contribution``: the reward Tamiyo's training reads).
        """
        slot = self.slot(seed)
        with slot.override_alpha(seed.seed_idx, 0.0):
            without = evaluate()
        contribution = current.accuracy - without.accuracy
        loss_contribution = without.loss - current.loss
        threshold = self.settings.min_contribution
        gate = GateResult(name="counterfactual_loss_contribution", passed=loss_contribution > threshold,
                          value=loss_contribution, threshold=threshold)
        measured = f"counterfactual contribution {loss_contribution:+.4f} nats (accuracy {contribution:+.4f})"
        if not gate.passed:
            return self.cull(seed, epoch, f"{measured} not above {threshold:+.4f}", command_id=command_id,
                             gates=[gate], metric=current.accuracy)
        event = self._move(seed, SeedState.FOSSILIZED, epoch, measured, command_id=command_id, gates=[gate])
        slot.set_alpha(seed.seed_idx, 1.0)
        link = slot.width_links.get(seed.seed_idx)
        if isinstance(link, WidthLink):  # the units become the host's own (and train on with it)
            merge_width(link)
            slot.detach_kernel(seed.seed_idx)
            info = self.kernel_info[seed]
            self.kernel_info[seed] = KernelInfo(info.kernel_id, info.blueprint_id, info.architecture, merged=True)
        kernel = slot.kernel(seed.seed_idx)
        if kernel is not None:
            kernel.requires_grad_(False)
        return [event], [self._field_report(seed, epoch, current.accuracy, FieldReportOutcome.FOSSILIZED,
                                            {"contribution": contribution, "without_seed": without.accuracy,
                                             "loss_contribution": loss_contribution,
                                             "without_seed_loss": without.loss})]

    def _field_report(self, seed: SeedId, epoch: int, post: float, outcome: FieldReportOutcome,
                      extra: dict[str, float] | None = None) -> FieldReport:
        slot = self.slot(seed)
        info = self.kernel_info[seed]
        return FieldReport(
            layer_id=seed.layer_id, seed_idx=seed.seed_idx, blueprint_id=info.blueprint_id, kernel_id=info.kernel_id,
            layer_name=slot.layer_name, pre_metric=float(slot.seed_pre_metric[seed.seed_idx]), post_metric=post,
            outcome=outcome, epochs_active=max(0, epoch - int(slot.seed_germinated_epoch[seed.seed_idx])),
            eval_metrics=extra or {},
        )

    # -- per step / per epoch mechanics ------------------------------------------------------
    def after_optimizer_step(self) -> None:
        """Advance every grafting seed's alpha ramp by one step."""
        for slot in self.slots.values():
            for idx in slot.grafting:
                if slot.alpha(idx) < 1.0:
                    step = int(slot.seed_graft_step[idx]) + 1
                    slot.seed_graft_step[idx] = step
                    slot.set_alpha(idx, min(1.0, step / max(1, int(slot.seed_graft_total[idx]))))

    def end_of_epoch(self, epoch: int, evaluate: Evaluate, current: Evaluation
                     ) -> tuple[list[SeedTransition], list[FieldReport]]:
        """Failures -> CULLED; embargo -> DORMANT; with auto_advance: advance, and finished grafts face the gate."""
        transitions: list[SeedTransition] = []
        reports: list[FieldReport] = []
        for slot in self.slots.values():
            failures = slot.take_failures()
            for idx in range(slot.num_seeds):
                seed = SeedId(layer_id=slot.layer_id, seed_idx=idx)
                state = slot.state(idx)
                if idx in failures and state in CULLABLE:
                    t, r = self.cull(seed, epoch, failures[idx], metric=current.accuracy)
                    transitions += t
                    reports += r
                    continue
                if idx in failures and state is SeedState.FOSSILIZED:
                    continue  # a fossil cannot be culled; its failure is counted in error_count
                if state is SeedState.CULLED:
                    left = int(slot.seed_embargo_left[idx]) - 1
                    slot.seed_embargo_left[idx] = max(0, left)
                    if left <= 0:
                        transitions.append(self._move(seed, SeedState.DORMANT, epoch, "embargo over"))
                        self.kernel_info.pop(seed, None)
                    continue
                slot.seed_epochs_in_state[idx] += 1
                if (state is SeedState.TRAINING and self.settings.auto_advance
                        and int(slot.seed_epochs_in_state[idx]) >= self.settings.training_epochs):
                    transitions += self.advance(seed, epoch, f"trained {self.settings.training_epochs} epochs")
                elif state is SeedState.GRAFTING and self.settings.auto_advance and slot.alpha(idx) >= 1.0:
                    t, r = self.fossilize_gate(seed, epoch, evaluate, current)
                    transitions += t
                    reports += r
        return transitions, reports

    # -- training support ----------------------------------------------------------------------
    def training_seed_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for slot in self.slots.values():
            for idx in range(slot.num_seeds):
                kernel = slot.kernel(idx)
                if slot.state(idx) is SeedState.TRAINING and kernel is not None:
                    params += [p for p in kernel.parameters() if p.requires_grad]
        return params

    @contextmanager
    def probe_training(self):
        """The isolated pass: TRAINING seeds blended at alpha 1 (their input detached)."""
        for slot in self.slots.values():
            slot.probe_training = True
        try:
            yield
        finally:
            for slot in self.slots.values():
                slot.probe_training = False

    def observe_gradients(self) -> None:
        for slot in self.slots.values():
            if slot.collect_health:
                slot.health.observe_gradient(slot.host.weight.grad)

    def seed_parameter_count(self) -> int:
        return sum(p.numel() for slot in self.slots.values() for p in slot.kernels.parameters())

    # -- telemetry -------------------------------------------------------------------------------
    def health_signals(self, epoch: int) -> list[HealthSignal]:
        signals = []
        for slot in self.slots.values():
            chunks = slot.health.summary()
            slot.health.reset()
            capacity = slot.capacity.summary()  # per layer: every seed of the slot carries it
            slot.capacity.reset()
            if chunks is None:
                continue
            active = sum(1 for i in range(slot.num_seeds) if slot.state(i) in ACTIVE)
            for idx, chunk in enumerate(chunks):
                state = slot.state(idx)
                ready = (
                    state is SeedState.TRAINING
                    and int(slot.seed_epochs_in_state[idx]) + 1 >= self.settings.training_epochs
                ) or (state is SeedState.GRAFTING and slot.alpha(idx) >= 1.0)
                signals.append(HealthSignal(
                    layer_id=slot.layer_id, seed_idx=idx, layer_name=slot.layer_name, chunk_id=idx, epoch=epoch,
                    activation_variance=chunk.activation_variance, dead_neuron_ratio=chunk.dead_neuron_ratio,
                    avg_correlation=chunk.avg_correlation, gradient_norm=chunk.gradient_norm,
                    capacity_gain=capacity, is_ready_for_transition=ready, health_score=chunk.health_score,
                    execution_latency=chunk.execution_latency_ms, error_count=int(slot.seed_errors[idx]),
                    active_seeds=active, total_seeds=slot.num_seeds,
                ))
        return signals

    # -- checkpoints -------------------------------------------------------------------------------
    def kernel_records(self) -> str:
        """JSON of the kernels in use: needed to rebuild modules before loading a checkpoint."""
        return json.dumps({
            f"{seed.layer_id}:{seed.seed_idx}": {
                "kernel_id": info.kernel_id, "blueprint_id": info.blueprint_id,
                "architecture": info.architecture.model_dump(mode="json"),
                "attached": self.slot(seed).kernel(seed.seed_idx) is not None, "merged": info.merged,
            }
            for seed, info in self.kernel_info.items()
        }, sort_keys=True)

    def restore_kernels(self, records: str, build: Callable[[BlueprintArchitecture], nn.Module]) -> None:
        """Rebuild (empty) kernel modules, and the host's widths, so that ``load_state_dict`` can fill them.

        Merged width seeds first: the kernels attached after them were made for the widened host.
        """
        loaded = json.loads(records)
        order = sorted(loaded, key=lambda key: not loaded[key].get("merged", False))
        for key in order:
            record = loaded[key]
            layer_id, idx = (int(part) for part in key.split(":"))
            seed = SeedId(layer_id=layer_id, seed_idx=idx)
            arch = BlueprintArchitecture.model_validate(record["architecture"])
            merged = bool(record.get("merged", False))  # checkpoints from before width seeds have no key
            self.kernel_info[seed] = KernelInfo(record["kernel_id"], record["blueprint_id"], arch, merged)
            slot = self.slot(seed)
            if merged:
                widen_for_resume(self.model, slot, arch)
            elif record["attached"]:
                kernel = build(arch)
                if arch.kind == WIDTH:
                    kernel, link = self._width_seed(slot, idx, kernel, None)
                    slot.width_links[idx] = link
                slot.attach_kernel(idx, kernel, arch.kind)

    def after_load(self) -> None:
        """Call after ``load_state_dict``: re-read buffers, freeze fossils, check every kernel is there."""
        for slot in self.slots.values():
            slot.refresh()
            for idx in range(slot.num_seeds):
                state, kernel = slot.state(idx), slot.kernel(idx)
                info = self.kernel_info.get(SeedId(layer_id=slot.layer_id, seed_idx=idx))
                if state in HAS_KERNEL and kernel is None and not (info is not None and info.merged):
                    raise KasminaError(f"checkpoint has seed {slot.layer_id}:{idx} {state.value} but no kernel record")
                if state is SeedState.FOSSILIZED and kernel is not None:  # a fossil has one (HAS_KERNEL, above)
                    kernel.requires_grad_(False)
