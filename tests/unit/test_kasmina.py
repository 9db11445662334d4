"""Kasmina: the lifecycle table, seed slots, alpha ramp, gradient isolation, failures, checkpoints."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from contracts import SeedId, SeedState, layer_id_for_path
from services.blueprints.modules import build_module
from services.blueprints.starter import conv_adapter, mlp_adapter
from services.kasmina.lifecycle import TRANSITIONS, IllegalTransitionError, check_transition
from services.kasmina.seed_manager import Evaluation, KernelInfo, LifecycleSettings, SeedManager
from services.kasmina.seed_slot import KasminaError, SeedSlot
from services.kasmina.wrap import wrap_layers

LEGAL = {
    (SeedState.DORMANT, SeedState.GERMINATED),
    (SeedState.GERMINATED, SeedState.TRAINING),
    (SeedState.GERMINATED, SeedState.CULLED),
    (SeedState.TRAINING, SeedState.GRAFTING),
    (SeedState.TRAINING, SeedState.CULLED),
    (SeedState.GRAFTING, SeedState.FOSSILIZED),
    (SeedState.GRAFTING, SeedState.CULLED),
    (SeedState.CULLED, SeedState.DORMANT),
}


@pytest.mark.parametrize("frm, to", sorted(LEGAL, key=str))
def test_every_legal_move(frm, to):
    check_transition(frm, to)


@pytest.mark.parametrize("frm, to", [p for p in itertools.product(SeedState, SeedState) if p not in LEGAL])
def test_every_illegal_move_is_rejected(frm, to):
    with pytest.raises(IllegalTransitionError, match=f"illegal transition {frm.value} -> {to.value}"):
        check_transition(frm, to)


def test_table_is_exactly_the_documented_one():
    assert {(f, t) for f, targets in TRANSITIONS.items() for t in targets} == LEGAL


# -- slots ------------------------------------------------------------------------------------------
class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def make(model_cls=Nested, paths=("encoder.0.0", "head"), seeds=2, settings=None):
    torch.manual_seed(0)
    model = model_cls()
    slots = wrap_layers(model, list(paths), seeds)
    manager = SeedManager(slots, settings or LifecycleSettings(grafting_steps=4, embargo_epochs=1), model)
    return model, slots, manager


def kernel_for(slot, hidden=8, seed=1):
    torch.manual_seed(seed)
    if len(slot.input_shape) == 1:
        bp = mlp_adapter(slot.input_shape[0], slot.output_shape[0], hidden)
    else:
        bp = conv_adapter(slot.input_shape, slot.output_shape, hidden)
    return build_module(bp.architecture), KernelInfo(f"k-{seed}", bp.blueprint_id, bp.architecture)


def test_nested_paths_are_wrapped_and_ids_come_from_the_path():
    model, slots, _ = make()
    assert set(slots) == {"encoder.0.0", "head"}
    assert model.get_submodule("encoder.0.0") is slots["encoder.0.0"]
    assert slots["encoder.0.0"].layer_id == layer_id_for_path("encoder.0.0")
    out = model(torch.randn(3, 6))
    assert out.shape == (3, 3)
    assert slots["head"].input_shape == [4] and slots["head"].output_shape == [3]


def test_unknown_layer_path_lists_the_seedable_ones():
    with pytest.raises(
        KasminaError, match=r"unknown layer path\(s\) encoder\.9; seedable layers: encoder\.0\.0, encoder\.1, head"
    ):
        wrap_layers(Nested(), ["encoder.9"], 1)
    with pytest.raises(KasminaError, match="unknown layer path"):
        wrap_layers(Nested(), ["encoder.0"], 1)  # a Sequential is not seedable
    with pytest.raises(KasminaError, match="wrap nn.Linear or nn.Conv2d, not ReLU"):
        SeedSlot(nn.ReLU(), "act", 1)


def test_dormant_seeds_change_nothing():
    torch.manual_seed(0)
    plain = Nested()
    model, _, _ = make()  # same seed, same initial weights
    x = torch.randn(5, 6)
    reference = plain.head(torch.relu(plain.encoder(x)))
    assert torch.equal(model(x), reference)


def germinate(manager, slots, path="encoder.0.0", idx=0, seed=1):
    slot = slots[path]
    kernel, info = kernel_for(slot, seed=seed)
    sid = SeedId(layer_id=slot.layer_id, seed_idx=idx)
    events, reports = manager.germinate(sid, kernel, info, epoch=0, pre_metric=0.5)
    return sid, events, reports


def test_germination_passes_the_probe_and_starts_training():
    model, slots, manager = make()
    model(torch.randn(2, 6))
    sid, events, reports = germinate(manager, slots)
    assert [(e.from_state, e.to_state) for e in events] == [
        (SeedState.DORMANT, SeedState.GERMINATED), (SeedState.GERMINATED, SeedState.TRAINING)]
    assert events[1].gates[0].name == "kernel_probe" and events[1].gates[0].passed
    assert manager.state(sid) is SeedState.TRAINING and reports == []


def test_training_seed_leaves_output_and_host_gradients_unchanged():
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def host_grads(with_seed: bool):
        model, slots, manager = make()
        model(x)
        if with_seed:
            germinate(manager, slots)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        if with_seed:  # the isolated pass the trainer runs: only seed parameters may get gradients
            params = manager.training_seed_parameters()
            with manager.probe_training():
                probe_loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(probe_loss, params)
            assert all(g is not None and g.abs().sum() > 0 for g in grads), "the seed learns the task"
        host = {n: p.grad.clone() for n, p in model.named_parameters() if ".kernels." not in n}
        return out.detach(), host

    out_plain, grads_plain = host_grads(False)
    out_seed, grads_seed = host_grads(True)
    assert torch.equal(out_plain, out_seed), "alpha 0: the model's output is the host's"
    assert grads_plain.keys() == grads_seed.keys()
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_seed[name]), name


def test_alpha_ramps_over_the_configured_steps_then_the_gate_decides():
    model, slots, manager = make(settings=LifecycleSettings(grafting_steps=4))
    model(torch.randn(2, 6))
    sid, _, _ = germinate(manager, slots)
    [event] = manager.advance(sid, 1, "test")
    assert event.to_state is SeedState.GRAFTING
    slot = slots["encoder.0.0"]
    alphas = []
    for _ in range(6):
        manager.after_optimizer_step()
        alphas.append(slot.alpha(0))
    assert alphas == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # A seed that helps (validation loss 0.6 with it, 0.9 without; +0.1 accuracy) fossilizes; its weights freeze.
    transitions, reports = manager.end_of_epoch(
        2, evaluate=lambda: Evaluation(0.9, 0.6) if slot._alpha_override else Evaluation(0.5, 0.9),
        current=Evaluation(0.6, 0.7))
    assert [t.to_state for t in transitions] == [SeedState.FOSSILIZED]
    gate = transitions[0].gates[0]
    assert gate.name == "counterfactual_loss_contribution" and gate.passed and gate.value == pytest.approx(0.3)
    assert reports[0].outcome.value == "fossilized" and reports[0].pre_metric == 0.5 and reports[0].post_metric == 0.7
    assert reports[0].eval_metrics["contribution"] == pytest.approx(0.1)
    assert reports[0].eval_metrics["loss_contribution"] == pytest.approx(0.3)
    assert not any(p.requires_grad for p in slot.kernel(0).parameters())


def test_a_seed_that_does_not_help_is_culled_then_embargoed_then_dormant():
    model, slots, manager = make(settings=LifecycleSettings(grafting_steps=1, embargo_epochs=2))
    model(torch.randn(2, 6))
    sid, _, _ = germinate(manager, slots)
    manager.advance(sid, 1, "test")
    manager.after_optimizer_step()
    transitions, reports = manager.end_of_epoch(2, evaluate=lambda: Evaluation(0.5, 0.8), current=Evaluation(0.5, 0.8))
    assert [t.to_state for t in transitions] == [SeedState.CULLED] and not transitions[0].gates[0].passed
    assert reports[0].outcome.value == "culled"
    assert slots["encoder.0.0"].kernel(0) is None
    assert manager.end_of_epoch(3, lambda: Evaluation(0.5, 0.8), Evaluation(0.5, 0.8))[0] == []
    [back] = manager.end_of_epoch(4, lambda: Evaluation(0.5, 0.8), Evaluation(0.5, 0.8))[0]
    assert (back.from_state, back.to_state) == (SeedState.CULLED, SeedState.DORMANT)


@pytest.mark.parametrize("with_seed, without, fossilized", [
    (Evaluation(1.05, 0.40), Evaluation(1.08, 0.41), True),   # lower loss, accuracy not moved yet (one sample): kept
    (Evaluation(1.10, 0.45), Evaluation(1.05, 0.40), False),  # higher loss though an accuracy blip: culled
    (Evaluation(0.80, 0.60), Evaluation(0.80, 0.60), False),  # no effect at all: culled (the threshold is strict)
])
def test_the_gate_judges_the_seed_by_the_validation_loss(with_seed, without, fossilized):
    model, slots, manager = make(settings=LifecycleSettings(grafting_steps=1))
    model(torch.randn(2, 6))
    sid, _, _ = germinate(manager, slots)
    manager.advance(sid, 1, "test")
    manager.after_optimizer_step()
    slot = slots["encoder.0.0"]
    [event], _ = manager.fossilize_gate(sid, 2, lambda: without if slot._alpha_override else with_seed, with_seed)
    assert (event.to_state is SeedState.FOSSILIZED) is fossilized
    assert event.gates[0].value == pytest.approx(without.loss - with_seed.loss)


@pytest.mark.parametrize("failure", ["raise", "nan", "shape"])
def test_a_failing_kernel_is_switched_off_and_culled(failure):
    model, slots, manager = make()
    x = torch.randn(4, 6)
    model(x)
    sid, _, _ = germinate(manager, slots)
    manager.advance(sid, 0, "test")
    manager.after_optimizer_step()
    slot = slots["encoder.0.0"]

    class Bad(nn.Module):
        def forward(self, inp):
            if failure == "raise":
                raise RuntimeError("boom")
            if failure == "nan":
                return torch.full((inp.shape[0], 5), float("nan"))
            return torch.zeros(inp.shape[0], 7)

    slot.kernels["0"] = Bad()
    slot.refresh()
    out = model(x)
    assert torch.isfinite(out).all(), "the failure never reaches the model's output"
    transitions, reports = manager.end_of_epoch(1, lambda: Evaluation(0.7, 0.5), Evaluation(0.7, 0.5))
    assert [t.to_state for t in transitions] == [SeedState.CULLED]
    assert {"raise": "kernel raised RuntimeError", "nan": "non-finite", "shape": "shape"}[failure] in transitions[
        0
    ].reason
    assert int(slot.seed_errors[0]) == 1 and reports[0].outcome.value == "culled"


def test_conv_slots_keep_feature_maps_4d():
    model, slots, manager = make(Convs, ("conv",), seeds=1)
    x = torch.randn(2, 2, 5, 5)
    model(x)
    slot = slots["conv"]
    assert slot.input_shape == [2, 5, 5] and slot.output_shape == [4, 5, 5]
    sid, events, _ = germinate(manager, slots, "conv")
    assert events[-1].to_state is SeedState.TRAINING
    manager.advance(sid, 0, "t")
    manager.after_optimizer_step()
    assert model(x).shape == (2, 3)
    seen = []
    slot.register_forward_hook(lambda m, i, o: seen.append(o.shape) and None)
    model(x)
    assert seen == [(2, 4, 5, 5)]


def test_checkpoint_round_trip_with_seeds_in_every_state():
    settings = LifecycleSettings(grafting_steps=4, embargo_epochs=3)
    model, slots, manager = make(paths=("encoder.0.0", "encoder.1", "head"), seeds=2, settings=settings)
    x = torch.randn(4, 6)
    model(x)
    ids = {name: [SeedId(layer_id=s.layer_id, seed_idx=i) for i in range(2)] for name, s in slots.items()}
    # encoder.0.0: [TRAINING, GRAFTING(alpha .5)], encoder.1: [FOSSILIZED, CULLED],
    # head: [GERMINATED-less DORMANT, DORMANT]
    germinate(manager, slots, "encoder.0.0", 0, seed=1)
    g = germinate(manager, slots, "encoder.0.0", 1, seed=2)[0]
    manager.advance(g, 0, "t")
    manager.after_optimizer_step()
    f = germinate(manager, slots, "encoder.1", 0, seed=3)[0]
    manager.advance(f, 0, "t")
    manager.after_optimizer_step()
    manager.after_optimizer_step()
    manager.fossilize_gate(f, 1, evaluate=lambda: Evaluation(1.0, 0.1), current=Evaluation(0.5, 0.9))
    c = germinate(manager, slots, "encoder.1", 1, seed=4)[0]
    manager.cull(c, 1, "t")
    # a GERMINATED seed (kernel loaded, before the probe moves it on)
    head = slots["head"]
    kernel, info = kernel_for(head, seed=5)
    head.attach_kernel(0, kernel)
    manager.kernel_info[ids["head"][0]] = info
    head.set_state(0, SeedState.GERMINATED)
    states = {s: manager.state(s) for v in ids.values() for s in v}
    assert set(states.values()) == {SeedState.TRAINING, SeedState.GRAFTING, SeedState.FOSSILIZED, SeedState.CULLED,
                                    SeedState.GERMINATED, SeedState.DORMANT}

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "kernels": manager.kernel_records()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model2, slots2, manager2 = make(paths=("encoder.0.0", "encoder.1", "head"), seeds=2, settings=settings)
    model2(x)
    manager2.restore_kernels(saved["kernels"], build_module)
    model2.load_state_dict(saved["model"])
    manager2.after_load()
    assert {s: manager2.state(s) for s in states} == states
    assert slots2["encoder.0.0"].alpha(1) == pytest.approx(0.75)  # three of four ramp steps
    assert int(slots2["encoder.1"].seed_embargo_left[1]) == 3
    assert not any(p.requires_grad for p in slots2["encoder.1"].kernel(0).parameters())
    assert torch.equal(model.eval()(x), model2.eval()(x))


def test_a_slot_orders_its_kernels_by_seed_index_whatever_order_they_came_in():
    """A resumed run attaches its kernels in seed order; the live run attached them as they germinated
    (seed 2, then seed 0). The optimizer's saved state is matched to the parameters by position, so both
    must list their parameters in the same order, or Adam's moments land on the wrong kernel."""
    def kernel(hidden: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    torch.manual_seed(0)
    live = SeedSlot(nn.Linear(4, 4), "layer", num_seeds=12)
    for idx, hidden in ((2, 3), (0, 5), (10, 7)):  # germination order, and "10" sorts before "2" as text
        live.attach_kernel(idx, kernel(hidden))
    optimizer = torch.optim.Adam(live.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    sum(k(x).square().mean() for k in live.kernels.values()).backward()
    optimizer.step()

    resumed = SeedSlot(nn.Linear(4, 4), "layer", num_seeds=12)
    for idx, hidden in ((0, 5), (2, 3), (10, 7)):  # the order a resume rebuilds them in
        resumed.attach_kernel(idx, kernel(hidden))
    resumed.load_state_dict(live.state_dict())
    again = torch.optim.Adam(resumed.parameters(), lr=0.1)
    again.load_state_dict(optimizer.state_dict())
    assert list(live.kernels) == list(resumed.kernels) == ["0", "2", "10"]
    mine = dict(resumed.named_parameters())
    for name, param in live.named_parameters():
        if param in optimizer.state:
            assert torch.equal(again.state[mine[name]]["exp_avg"], optimizer.state[param]["exp_avg"]), name
    live.detach_kernel(2)
    live.attach_kernel(2, kernel(3))  # re-germinated after a cull: back in its place
    assert list(live.kernels) == ["0", "2", "10"]
