"""Weights-only kernel artifacts: safetensors bytes, content-addressed by sha256.

Loading never unpickles: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import hashlib

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from contracts import BlueprintArchitecture
from services.blueprints.modules import BlueprintError, build_module


class ArtifactError(ValueError):
    """An artifact that is corrupt, tampered with, or does not fit its blueprint."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kernel_id_for(artifact: bytes) -> str:
    return "k-" + sha256_hex(artifact)[:32]


def save_artifact(module: nn.Module) -> bytes:
    """The module's state (parameters and buffers) as safetensors bytes."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    return save_tensors(state, metadata={"format": "esper-kernel-v1"})


def load_artifact(data: bytes, arch: BlueprintArchitecture, checksum: str | None = None) -> nn.Module:
    """Rebuild the module of ``arch`` and load the artifact's weights into it, strictly."""
    if checksum is not None and sha256_hex(data) != checksum:
        raise ArtifactError(f"artifact checksum mismatch: expected {checksum}, got {sha256_hex(data)}")
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
        raise ArtifactError(f"artifact does not fit its blueprint: {str(exc).splitlines()[0]}") from None
    return module


def probe(module: nn.Module, input_shape: list[int], batch: int = 4) -> torch.Tensor:
    """Run the module on a random probe batch (eval mode); used by validation and gates."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            return module(torch.randn(batch, *input_shape))
    finally:
        module.train(was_training)
