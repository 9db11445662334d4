"""Weights-only kernel artifacts: safetensors bytes, content-addressed by sha256.

Loading never unpickles: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from contracts import BlueprintArchitecture
from contracts.assets import blueprint_id_for
from services.blueprints.content_address import (
    ArtifactError,
    artifact_blueprint_id,
    format_tag,
    kernel_id_for,
    sha256_hex,
)
from services.blueprints.modules import BlueprintError, build_module

__all__ = ["ArtifactError", "kernel_id_for", "load_artifact", "probe", "save_artifact", "sha256_hex"]


def save_artifact(module: nn.Module, blueprint_id: str | None = None) -> bytes:
    """The module's state (parameters and buffers) as safetensors bytes.

    With ``blueprint_id`` the header names the blueprint, so the kernel id (the sha256 of these
    bytes) addresses the weights together with the architecture they belong to.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    # One metadata key: safetensors writes several in no fixed order, and the bytes must be deterministic.
    return save_tensors(state, metadata={"format": format_tag(blueprint_id)})


def load_artifact(data: bytes, arch: BlueprintArchitecture, checksum: str | None = None) -> nn.Module:
    """Rebuild the module of ``arch`` and load the artifact's weights into it, strictly."""
    if checksum is not None and sha256_hex(data) != checksum:
        raise ArtifactError(f"artifact checksum mismatch: its bytes do not hash to {checksum}")
    named = artifact_blueprint_id(data)
    if named is not None and named != blueprint_id_for(arch):
        raise ArtifactError(f"artifact was compiled for {named[:80]}, not for {blueprint_id_for(arch)}")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"not a safetensors weights-only artifact: {exc}") from None
    try:
        module = build_module(arch)
    except BlueprintError as exc:
        raise ArtifactError(f"artifact blueprint cannot be built: {exc}") from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"artifact does not fit its blueprint: {(str(exc).splitlines() or [''])[0][:300]}"
        ) from None
    return module


def probe(module: nn.Module, input_shape: list[int], batch: int = 4) -> torch.Tensor:
    """Run the module on a random probe batch (eval mode); used by validation and gates."""
    was_training = module.training
    module.eval()
    try:
        # On the module's device: Kasmina probes kernels already moved to the host's (a GPU's).
        device = next(module.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            return module(torch.randn(batch, *input_shape, device=device))
    finally:
        module.train(was_training)
