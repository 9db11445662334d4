"""Content addresses are recomputed on consume, and a blob reference never names a path of its own."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from contracts import (
    BlueprintArchitecture,
    CompilationOutcome,
    CompiledKernel,
    KernelMetadata,
    KernelReady,
    OpSpec,
    TopicName,
)
from services.blueprints.artifacts import ArtifactError
from services.blueprints.compiler import compile_blueprint
from services.blueprints.content_address import BlobStore, kernel_problem, ready_problem, sha256_hex
from services.blueprints.starter import mlp_adapter
from services.core.errors import ContractViolationError
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from services.urabrask.characterize import BATCH, characterize, probe_batch
from services.urza.catalog import Catalog
from services.urza.kernel_library import KernelLoader

LIBRARY = topic_spec(TopicName.LIBRARY_KERNELS.value)
OUTSIDE_REFS = ["blob:/dev/zero", "blob:../../etc/passwd", "blob:/etc/hostname", "blob:/etc/no-such-file-here",
                "blob:" + "A" * 64, "blob:" + "a" * 63, "blob:" + "a" * 64 + "/", "/etc/passwd", ""]


@pytest.fixture(scope="module")
def genuine() -> CompiledKernel:
    return compile_blueprint(mlp_adapter(2, 8, 24), init_seed=1)[0]


@pytest.fixture(scope="module")
def other() -> CompiledKernel:
    """Same architecture, other weights: what a forger would slip in under the genuine id."""
    return compile_blueprint(mlp_adapter(2, 8, 24), init_seed=2)[0]


def _as_blob(kernel: CompiledKernel, ref: str) -> CompiledKernel:
    # model_copy skips validation: this is what a consumer gets from a record the contract never saw.
    return kernel.model_copy(update={"binary_ref": ref, "artifact": None})


@pytest.mark.parametrize("ref", OUTSIDE_REFS)
def test_a_blob_ref_that_is_not_a_sha256_is_a_contract_violation(genuine, ref):
    with pytest.raises(ValidationError, match="binary_ref"):
        CompiledKernel.model_validate(genuine.model_dump() | {"binary_ref": ref, "artifact": None})
    message = LIBRARY.message_type(sender_id="tests", topic=LIBRARY.name, payload=_as_blob(genuine, ref))
    data = SingleObjectCodec().encode(LIBRARY, message)
    with pytest.raises(ContractViolationError, match="binary_ref"):
        SingleObjectCodec().decode(LIBRARY, data)


def test_outside_refs_are_refused_without_opening_anything_or_telling_what_is_there(genuine, tmp_path, monkeypatch):
    opened = []
    real_os_open, real_open = os.open, builtins.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_os_open(path, *a, **k))
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    loader, store = KernelLoader(tmp_path), BlobStore(tmp_path)
    reasons = set()
    for ref in OUTSIDE_REFS:
        with pytest.raises(ArtifactError) as caught:
            store.get(ref)
        reasons.add(str(caught.value))
        with pytest.raises(ArtifactError) as caught:
            loader.load_module(_as_blob(genuine, ref))
        assert "etc" not in str(caught.value) and "zero" not in str(caught.value)
    assert opened == [], "nothing was opened for a reference that is not a sha256"
    assert len(reasons) == 1, "one reason for every refused ref: it says nothing about what exists outside"
    monkeypatch.undo()
    assert sha256_hex(Path("/etc/hostname").read_bytes()) not in reasons.pop()


def test_a_blob_is_read_bounded_and_hashed_before_use(genuine, tmp_path):
    store = BlobStore(tmp_path)
    ref = store.put(genuine.artifact)
    assert ref == f"blob:{genuine.metadata.checksum}"
    loader = KernelLoader(tmp_path)
    kernel = _as_blob(genuine, ref)
    assert torch.equal(loader.load_module(kernel)[0].weight, KernelLoader().load_module(genuine)[0].weight)

    path = tmp_path / genuine.metadata.checksum
    path.write_bytes(genuine.artifact[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="corrupt: its bytes do not hash to its name"):
        KernelLoader(tmp_path).load_module(kernel)
    with pytest.raises(ArtifactError, match="larger than 100 bytes"):
        BlobStore(tmp_path, max_bytes=100).get(ref)
    path.unlink()
    path.symlink_to("/dev/zero")  # a link planted in the folder still cannot lead out of it
    with pytest.raises(ArtifactError, match="cannot be opened"):
        store.get(ref)
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open for ever
    with pytest.raises(ArtifactError, match="not a regular file"):
        store.get(ref)
    path.unlink()
    with pytest.raises(ArtifactError, match="is not in this machine's blob folder"):
        store.get(ref)


def test_other_weights_under_a_genuine_kernel_id_are_refused_and_never_replace_it(genuine, other):
    forged = [
        # the other artifact and its own checksum, under the genuine ids
        other.model_copy(update={"kernel_id": genuine.kernel_id,
                                 "metadata": other.metadata.model_copy(update={"kernel_id": genuine.kernel_id})}),
        # the other artifact with the genuine checksum
        genuine.model_copy(update={"artifact": other.artifact}),
        # the genuine weights under another architecture (tanh for relu: the same tensors)
        _reinterpreted(genuine),
    ]
    loader = KernelLoader()
    assert loader.add(genuine)
    for kernel in forged:
        assert kernel_problem(kernel) is not None
        assert not loader.add(kernel)
        with pytest.raises(ArtifactError):
            KernelLoader().load_module(kernel)
    assert loader.kernels[genuine.kernel_id] is genuine, "the genuine entry stands"
    assert "content address" in loader.refused[genuine.kernel_id] or "checksum" in loader.refused[genuine.kernel_id] \
        or "compiled for" in loader.refused[genuine.kernel_id]


def _reinterpreted(kernel: CompiledKernel) -> CompiledKernel:
    layers = [op if op.op != "relu" else OpSpec(op="tanh") for op in kernel.architecture.layers]
    arch = kernel.architecture.model_copy(update={"layers": layers})
    bp_id = "bp-" + arch.content_hash()[:32]
    return kernel.model_copy(update={"architecture": arch, "blueprint_id": bp_id,
                                     "metadata": kernel.metadata.model_copy(update={"blueprint_id": bp_id})})


def test_catalog_ignores_announcements_whose_ids_do_not_match_their_checksum(genuine, other):
    forged = other.metadata.model_copy(update={"kernel_id": genuine.kernel_id})
    ready = KernelReady(blueprint_id=genuine.blueprint_id, outcome=CompilationOutcome.READY, kernel=forged)
    assert "content address" in ready_problem(ready)
    catalog = Catalog()
    catalog.apply(TopicName.COMPILATION_KERNEL_READY.value, ready)
    assert catalog.kernels == {}
    catalog.apply(TopicName.COMPILATION_KERNEL_READY.value,
                  KernelReady(blueprint_id=genuine.blueprint_id, outcome=CompilationOutcome.READY,
                              kernel=genuine.metadata))
    assert catalog.kernels[genuine.kernel_id].metadata.checksum == genuine.metadata.checksum


def test_urabrask_probes_with_the_architectures_shape_not_the_messages(genuine):
    with pytest.raises(ValidationError, match="kernel shape"):
        KernelMetadata.model_validate(genuine.metadata.model_dump() | {"input_shape": [1, 1_000_000, 1_000_000]})
    claimed = genuine.metadata.model_copy(update={"input_shape": [1, 1_000_000, 1_000_000]})
    module = KernelLoader().load_module(genuine)
    result = characterize(module, claimed, torch.device("cpu"), genuine.architecture)
    assert result.passed, result.failure_reason
    assert probe_batch(genuine.architecture) == BATCH
    big = BlueprintArchitecture(input_shape=[96, 64, 64], output_shape=[96, 64, 64], layers=[
        OpSpec(op="conv2d", width=96, kernel_size=1), OpSpec(op="relu")] * 3)
    assert 1 <= probe_batch(big) < BATCH, "the probe batch is cut to keep its activations bounded"
