"""Width and depth seeds: function preserved at germination, cull restores the host exactly, fossilize
merges the units into the host (its real width grows), checkpoint -> resume gives the same model."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from contracts import BlueprintArchitecture, BlueprintOp, OpSpec, SeedId, SeedState
from services.blueprints.compiler import compile_blueprint
from services.blueprints.modules import BlueprintError, build_module
from services.blueprints.starter import depth_block, width_units
from services.kasmina.growth import WidthSeed, find_consumer
from services.kasmina.seed_manager import Evaluation, KernelInfo, LifecycleSettings, SeedManager
from services.kasmina.seed_slot import KasminaError
from services.kasmina.wrap import wrap_layers
from services.tolaria.config import ModelConfig
from services.tolaria.models import build_host, parameter_count

TIGHT = {"rtol": 0.0, "atol": 1e-6}


def host(kind: str, paths: list[str], seeds: int = 2):
    torch.manual_seed(0)
    if kind == "mlp":
        model = build_host(ModelConfig(kind="mlp", hidden=[6, 5]), [4], 3)
        x = torch.randn(32, 4)
    else:
        model = build_host(ModelConfig(kind="cnn", channels=[3, 4]), [2, 6, 6], 3)
        x = torch.randn(8, 2, 6, 6)
    slots = wrap_layers(model, paths, seeds)
    manager = SeedManager(slots, LifecycleSettings(grafting_steps=2, embargo_epochs=1), model)
    model.eval()
    model(x[:2])  # records the slots' shapes
    return model, slots, manager, x


def width_kernel(slot, units=3, seed=1):
    torch.manual_seed(seed)
    bp = width_units(slot.input_shape, slot.output_shape, units)
    return build_module(bp.architecture), KernelInfo(f"kw-{seed}", bp.blueprint_id, bp.architecture)


def depth_kernel(slot, hidden=4, seed=2):
    torch.manual_seed(seed)
    bp = depth_block(slot.output_shape, hidden)
    return build_module(bp.architecture), KernelInfo(f"kd-{seed}", bp.blueprint_id, bp.architecture)


def germinate(manager, slot, make, idx=0, probe=None, **kw):
    kernel, info = make(slot, **kw)
    sid = SeedId(layer_id=slot.layer_id, seed_idx=idx)
    events, _ = manager.germinate(sid, kernel, info, epoch=0, pre_metric=0.5, gradient_probe=probe)
    assert [e.to_state for e in events] == [SeedState.GERMINATED, SeedState.TRAINING], events
    return sid


def outputs(model, x, slots):
    """The model as the host sees it, and with every seed forced in at alpha 1 (the isolated pass)."""
    with torch.no_grad():
        plain = model(x)
        for slot in slots.values():
            slot.probe_training = True
        try:
            forced = model(x)
        finally:
            for slot in slots.values():
                slot.probe_training = False
    return plain, forced


def scramble(module: nn.Module, seed: int = 7) -> None:
    """Stand-in for training: every parameter of the seed nonzero (the zero fan-out / last op included)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


CASES = [("mlp", "body.0"), ("mlp", "body.2"), ("cnn", "features.0"), ("cnn", "features.2")]


@pytest.mark.parametrize("kind, path", CASES)
@pytest.mark.parametrize("seed_kind", ["width", "depth"])
def test_germination_preserves_the_function(kind, path, seed_kind):
    model, slots, manager, x = host(kind, [path])
    before = model(x).detach()
    make = width_kernel if seed_kind == "width" else depth_kernel
    sid = germinate(manager, slots[path], make)
    plain, forced = outputs(model, x, slots)
    assert torch.allclose(plain, before, **TIGHT)  # TRAINING: alpha 0
    assert torch.allclose(forced, before, **TIGHT)  # at alpha 1 too: zero fan-out / zero last op
    manager.advance(sid, 0, "t")
    for _ in range(2):
        manager.after_optimizer_step()
    assert slots[path].alpha(0) == 1.0
    assert torch.allclose(model(x), before, **TIGHT)


def test_width_with_a_gradmax_fan_in_preserves_the_function_too():
    model, slots, manager, x = host("mlp", ["body.0"])
    y = torch.randint(0, 3, (len(x),))
    before = model(x).detach()
    germinate(manager, slots["body.0"], width_kernel, probe=lambda: F.cross_entropy(model(x), y))
    assert torch.allclose(outputs(model, x, slots)[1], before, **TIGHT)


def fan_out_gradient_norm(probe_fan_in: bool) -> float:
    model, slots, manager, x = host("mlp", ["body.0"])
    torch.manual_seed(3)
    y = torch.randint(0, 3, (len(x),))
    germinate(manager, slots["body.0"], width_kernel, probe=(lambda: F.cross_entropy(model(x), y))
              if probe_fan_in else None)
    seed = slots["body.0"].kernel(0)
    assert isinstance(seed, WidthSeed)
    slots["body.0"].probe_training = True  # the isolated pass: the seed at alpha 1
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, seed.fan_out)
    return float(grad.norm())


def test_gradmax_fan_in_gives_the_new_units_a_larger_gradient_than_the_random_one():
    random_norm, gradmax_norm = fan_out_gradient_norm(False), fan_out_gradient_norm(True)
    print(f"fan-out gradient norm at germination: random {random_norm:.4g}, gradmax {gradmax_norm:.4g}, "
          f"ratio {gradmax_norm / random_norm:.2f}")
    assert gradmax_norm > random_norm > 0


@pytest.mark.parametrize("kind, path", CASES)
@pytest.mark.parametrize("seed_kind", ["width", "depth"])
def test_cull_restores_the_original_function_exactly(kind, path, seed_kind):
    model, slots, manager, x = host(kind, [path])
    before = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sid = germinate(manager, slots[path], width_kernel if seed_kind == "width" else depth_kernel)
    scramble(slots[path].kernel(0))
    manager.advance(sid, 0, "t")
    manager.after_optimizer_step()
    assert not torch.allclose(model(x), before, **TIGHT)  # the seed does something now
    manager.cull(sid, 1, "t")
    assert torch.equal(model(x), before)
    assert model.state_dict().keys() == state.keys()


@pytest.mark.parametrize("kind, path", CASES)
def test_fossilizing_a_width_seed_merges_its_units_into_the_host(kind, path):
    model, slots, manager, x = host(kind, [path])
    slot = slots[path]
    consumer = find_consumer(model, slot)
    host_params = parameter_count(model)
    units_before, consumer_in = slot.host.weight.shape[0], consumer.layer.weight.shape[1]
    sid = germinate(manager, slot, width_kernel, units=3)
    scramble(slot.kernel(0))
    manager.advance(sid, 0, "t")
    for _ in range(2):
        manager.after_optimizer_step()
    grafted = model(x).detach()
    events, reports = manager.fossilize_gate(sid, 1, evaluate=lambda: Evaluation(1.0, 0.1),
                                             current=Evaluation(0.5, 0.9))
    assert [e.to_state for e in events] == [SeedState.FOSSILIZED] and reports[0].outcome.value == "fossilized"
    assert slot.kernel(0) is None and manager.state(sid) is SeedState.FOSSILIZED
    assert torch.allclose(model(x), grafted, rtol=0, atol=1e-5)  # the merged host computes what the seed did
    assert slot.host.weight.shape[0] == units_before + 3
    assert consumer.layer.weight.shape[1] == consumer_in + 3 * consumer.columns_per_unit
    assert slot.output_shape[0] == units_before + 3
    grown = parameter_count(model) - host_params
    assert grown == slot.host.weight[0].numel() * 3 + 3 + consumer.layer.weight.shape[0] * 3 * (
        consumer.columns_per_unit * (consumer.layer.weight[0, 0].numel()))
    assert all(p.requires_grad for p in slot.host.parameters())  # the units train on with the host


def test_a_fossilized_depth_block_stays_as_a_frozen_kernel():
    model, slots, manager, x = host("mlp", ["body.2"])
    sid = germinate(manager, slots["body.2"], depth_kernel)
    manager.advance(sid, 0, "t")
    manager.after_optimizer_step()
    manager.after_optimizer_step()
    manager.fossilize_gate(sid, 1, evaluate=lambda: Evaluation(1.0, 0.1), current=Evaluation(0.5, 0.9))
    assert not any(p.requires_grad for p in slots["body.2"].kernel(0).parameters())


def checkpoint(model, manager):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "kernels": manager.kernel_records()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind, paths", [("mlp", ["body.0", "body.2", "head"]),
                                         ("cnn", ["features.0", "features.2", "head"])])
def test_checkpoint_and_resume_rebuild_widened_hosts_and_live_seeds(kind, paths):
    model, slots, manager, x = host(kind, paths)
    first, second = slots[paths[0]], slots[paths[1]]
    merged = germinate(manager, first, width_kernel, units=3)  # fossilized: merged into first and second
    scramble(first.kernel(0))
    manager.advance(merged, 0, "t")
    manager.after_optimizer_step()
    manager.after_optimizer_step()
    manager.fossilize_gate(merged, 1, evaluate=lambda: Evaluation(1.0, 0.1), current=Evaluation(0.5, 0.9))
    live = germinate(manager, second, width_kernel, units=2, seed=3)  # grafting, made for the widened layer
    scramble(second.kernel(0), seed=8)
    manager.advance(live, 1, "t")
    manager.after_optimizer_step()
    depth = germinate(manager, first, depth_kernel, idx=1, seed=4)  # training, on the widened output
    scramble(first.kernel(1), seed=9)
    saved = checkpoint(model, manager)
    expected_plain, expected_forced = outputs(model, x, slots)

    model2, slots2, manager2, _ = host(kind, paths)
    manager2.restore_kernels(saved["kernels"], build_module)
    model2.load_state_dict(saved["model"])
    manager2.after_load()
    plain, forced = outputs(model2, x, slots2)
    assert torch.equal(plain, expected_plain) and torch.equal(forced, expected_forced)
    assert {n: p.shape for n, p in model2.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    assert parameter_count(model2) == parameter_count(model)
    states = [manager2.state(s) for s in (merged, live, depth)]
    assert states == [SeedState.FOSSILIZED, SeedState.GRAFTING, SeedState.TRAINING]
    # the resumed width seed still works: fossilizing it merges as before
    manager2.after_optimizer_step()
    before = model2(x).detach()
    manager2.fossilize_gate(live, 2, evaluate=lambda: Evaluation(1.0, 0.1), current=Evaluation(0.5, 0.9))
    assert torch.allclose(model2(x), before, rtol=0, atol=1e-5)


def test_a_width_seed_needs_a_next_layer_and_its_two_layers_to_itself():
    model, slots, manager, _ = host("mlp", ["body.0", "body.2", "head"])
    kernel, info = width_kernel(slots["head"])
    with pytest.raises(KasminaError, match="head has no layer after it"):
        manager.germinate(SeedId(layer_id=slots["head"].layer_id, seed_idx=0), kernel, info, 0, 0.5)
    germinate(manager, slots["body.2"], depth_kernel)
    kernel, info = width_kernel(slots["body.0"])
    with pytest.raises(KasminaError, match="body.2 holds other seeds"):
        manager.germinate(SeedId(layer_id=slots["body.0"].layer_id, seed_idx=0), kernel, info, 0, 0.5)
    model, slots, manager, _ = host("mlp", ["body.0", "body.2", "head"])
    germinate(manager, slots["body.0"], width_kernel)
    for path in ("body.0", "body.2"):
        kernel, info = depth_kernel(slots[path])
        with pytest.raises(KasminaError, match=f"{path} is being widened by seed"):
            manager.germinate(SeedId(layer_id=slots[path].layer_id, seed_idx=1), kernel, info, 0, 0.5)
    germinate(manager, slots["head"], depth_kernel)  # not part of the widening


def test_a_conv_fan_in_must_have_the_layers_geometry():
    model, slots, manager, _ = host("cnn", ["features.0"])
    slot = slots["features.0"]
    bp = width_units(slot.input_shape, slot.output_shape, 2, kernel_size=5)
    kernel, info = build_module(bp.architecture), KernelInfo("k", bp.blueprint_id, bp.architecture)
    with pytest.raises(KasminaError, match="geometry"):
        manager.germinate(SeedId(layer_id=slot.layer_id, seed_idx=0), kernel, info, 0, 0.5)


def test_width_and_depth_blueprints_compile_and_their_ir_is_checked():
    for bp in (width_units([4], [6], 3), width_units([2, 6, 6], [3, 6, 6], 2), depth_block([6], 4),
               depth_block([3, 6, 6], 4)):
        kernel, _ = compile_blueprint(bp)
        assert kernel.architecture is not None and kernel.architecture.kind == bp.architecture.kind
    assert width_units([4], [6], 3).blueprint_id != width_units([4], [3], 3).blueprint_id
    bad = [
        (dict(input_shape=[4], output_shape=[6], layers=[OpSpec(op=BlueprintOp.LINEAR, width=3),
                                                          OpSpec(op=BlueprintOp.RELU)], kind="width"), "one linear"),
        (dict(input_shape=[4], output_shape=[6], layers=[OpSpec(op=BlueprintOp.LINEAR, width=6)], kind="depth"),
         "maps the layer's output to itself"),
        (dict(input_shape=[6], output_shape=[6], layers=[OpSpec(op=BlueprintOp.RELU)], kind="depth"),
         "ends in a linear or conv2d"),
    ]
    for fields, message in bad:
        arch = BlueprintArchitecture.model_construct(**fields)
        with pytest.raises(BlueprintError, match=message):
            build_module(arch)
    with pytest.raises(ValueError, match="not a seed kind"):
        BlueprintArchitecture(input_shape=[4], output_shape=[4], layers=[OpSpec(op=BlueprintOp.RELU)], kind="wide")


def test_a_side_branch_blueprint_keeps_its_id():
    """``kind`` left at its default is not part of the content address: ids on the log still match."""
    arch = BlueprintArchitecture(input_shape=[4], output_shape=[4], layers=[OpSpec(op=BlueprintOp.RELU)])
    legacy = {"ir_version": 1, "input_shape": [4], "output_shape": [4],
              "layers": [{"op": "relu", "width": None, "kernel_size": None, "heads": None}]}
    import hashlib
    import json
    canonical = json.dumps(legacy, sort_keys=True, separators=(",", ":"))
    assert arch.content_hash() == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_kernel_of_the_wrong_kind_or_shape_fails_its_probe_and_is_culled():
    model, slots, manager, _ = host("mlp", ["body.0"])
    slot = slots["body.0"]  # Linear(4, 6)
    sid = SeedId(layer_id=slot.layer_id, seed_idx=0)
    bp = width_units([5], [6], 2)
    with pytest.raises(KasminaError, match=r"the fan-in reads \[5\], the layer \[4\]"):
        manager.germinate(sid, build_module(bp.architecture), KernelInfo("k", bp.blueprint_id, bp.architecture), 0, 0)
    for bp in (depth_block([4], 3), width_units([4], [7], 2)):
        kernel, info = build_module(bp.architecture), KernelInfo("k", bp.blueprint_id, bp.architecture)
        events, _ = manager.germinate(sid, kernel, info, 0, 0.5)
        assert [e.to_state for e in events] == [SeedState.GERMINATED, SeedState.CULLED]
        assert events[-1].gates[0].name == "kernel_probe" and not events[-1].gates[0].passed
        manager.end_of_epoch(0, lambda: Evaluation(0.7, 0.5), Evaluation(0.7, 0.5))  # embargo over: dormant again
        assert manager.state(sid) is SeedState.DORMANT
