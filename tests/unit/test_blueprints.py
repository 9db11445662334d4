"""Blueprint IR: whitelisted ops only, shape contracts, weights-only artifacts that refuse pickles."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from contracts import BlueprintArchitecture, BlueprintOp, OpSpec
from services.blueprints.artifacts import ArtifactError, load_artifact, probe, save_artifact, sha256_hex
from services.blueprints.compiler import compile_blueprint
from services.blueprints.modules import BlueprintError, build_module
from services.blueprints.starter import for_slot


def arch(in_shape, out_shape, *ops):
    return BlueprintArchitecture(input_shape=in_shape, output_shape=out_shape, layers=[OpSpec(**o) for o in ops])


@pytest.mark.parametrize(
    "blueprint",
    for_slot([16], [8]) + for_slot([4, 6, 6], [8, 6, 6]) + for_slot([4, 8, 8], [8, 4, 4]),
    ids=lambda b: b.name,
)
def test_starter_blueprints_build_and_fit_their_slot(blueprint):
    module = build_module(blueprint.architecture)
    out = probe(module, blueprint.architecture.input_shape)
    arch = blueprint.architecture
    if arch.kind == "width":  # a width seed's kernel makes its new units (Kasmina feeds them to the next layer)
        assert list(out.shape[1:]) == [arch.layers[0].width, *arch.output_shape[1:]]
    else:
        assert list(out.shape[1:]) == arch.output_shape


@pytest.mark.parametrize("ops, in_shape, out_shape", [
    ([dict(op="linear", width=8), dict(op="layer_norm"), dict(op="gelu"), dict(op="bottleneck", width=2),
      dict(op="attention_lite", heads=2), dict(op="tanh"), dict(op="linear", width=8), dict(op="residual")], [8], [8]),
    ([dict(op="conv2d", width=4, kernel_size=3), dict(op="batch_norm"), dict(op="relu"),
      dict(op="attention_lite", heads=2), dict(op="residual")], [4, 5, 5], [4, 5, 5]),
])
def test_every_whitelisted_op_builds(ops, in_shape, out_shape):
    module = build_module(arch(in_shape, out_shape, *ops))
    assert probe(module, in_shape).shape == (4, *out_shape)
    used = {o["op"] for o in ops}
    assert used <= {op.value for op in BlueprintOp}


@pytest.mark.parametrize("ops, in_shape, out_shape, message", [
    ([dict(op="linear", width=5)], [8], [6], r"produces shape \[5\], the slot needs \[6\]"),
    ([dict(op="conv2d", width=4)], [8], [4], "conv2d needs a \\[C, H, W\\] input"),
    ([dict(op="linear", width=4), dict(op="residual")], [8], [4], "residual at op 1"),
    ([dict(op="attention_lite", heads=3)], [8], [8], "do not split into 3 tokens"),
])
def test_shape_errors_are_explained(ops, in_shape, out_shape, message):
    with pytest.raises(BlueprintError, match=message):
        build_module(arch(in_shape, out_shape, *ops))


def test_unknown_ops_cannot_even_be_expressed():
    with pytest.raises(ValueError):
        OpSpec(op="exec")


def test_artifact_round_trip_is_content_addressed_and_verified():
    a = arch([8], [4], dict(op="linear", width=16), dict(op="relu"), dict(op="linear", width=4))
    torch.manual_seed(0)
    module = build_module(a)
    data = save_artifact(module)
    assert save_artifact(module) == data, "deterministic bytes, so the sha256 is a content address"
    loaded = load_artifact(data, a, sha256_hex(data))
    x = torch.randn(3, 8)
    assert torch.equal(module(x), loaded(x))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(data[:-1] + bytes([data[-1] ^ 1]), a, sha256_hex(data))
    other = arch([8], [4], dict(op="linear", width=4))
    with pytest.raises(ArtifactError, match="does not fit its blueprint"):
        load_artifact(data, other)


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    a = arch([8], [4], dict(op="linear", width=4))
    payloads = [pickle.dumps(_Exploit(str(marker)))]
    buffer = io.BytesIO()
    torch.save({"0.weight": _Exploit(str(marker))}, buffer)  # a torch.save file with a malicious object inside
    payloads.append(buffer.getvalue())
    for payload in payloads:
        with pytest.raises(ArtifactError, match="not a safetensors weights-only artifact"):
            load_artifact(payload, a)
    assert not marker.exists(), "no code from the artifact ran"


def test_compiler_validates_and_describes_the_kernel():
    bp = for_slot([16], [8])[0]
    kernel, seconds = compile_blueprint(bp, init_seed=3)
    assert kernel.kernel_id.startswith("k-") and kernel.metadata.checksum == sha256_hex(kernel.artifact)
    assert kernel.metadata.parameter_count == sum(p.numel() for p in build_module(bp.architecture).parameters())
    assert kernel.architecture == bp.architecture and seconds >= 0
    assert compile_blueprint(bp, init_seed=3)[0].kernel_id == kernel.kernel_id
    assert compile_blueprint(bp, init_seed=4)[0].kernel_id != kernel.kernel_id
    with pytest.raises(BlueprintError, match="exceed the budget"):
        compile_blueprint(bp, max_parameters=10)


def test_kernel_library_hands_out_independent_copies(tmp_path):
    from services.urza.kernel_library import KernelLoader

    bp = for_slot([16], [8])[0]
    kernel, _ = compile_blueprint(bp)
    library = KernelLoader(tmp_path, cache_size=2)
    first, second = library.load_module(kernel), library.load_module(kernel)
    assert first is not second
    with torch.no_grad():
        first[0].weight.add_(1.0)
    assert not torch.equal(first[0].weight, second[0].weight), "a seed's training never touches another's kernel"
    tampered = kernel.model_copy(update={"artifact": kernel.artifact[:-1] + b"\x00"})
    with pytest.raises(ArtifactError, match="artifact bytes do not match its checksum"):
        library.load_module(tampered)
