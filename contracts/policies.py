"""Tamiyo's policy versions and their promotion: the records of ``library.policies`` and
``library.policy.promotions`` (both compacted, keyed by version).

A version is a content hash of the policy's weights (``gnn-`` + 12 hex digits), so a record can be
checked against its own bytes. The artifact is weights only (safetensors: named raw tensors, nothing
executable); its architecture is declared beside it and every consumer checks the tensors' shapes
against it before believing it.

Promotions are folded in log order and the latest wins. Compaction keeps the latest promotion of
each version, so the log's last promotion (the one that wins) always survives it.
"""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.kernels import SHA256_PATTERN

POLICY_VERSION_PATTERN = r"^gnn-[0-9a-f]{12}$"
# Weights-only artifacts travel inline; the data topics accept 2 MiB per record.
MAX_POLICY_ARTIFACT_BYTES = 1_500_000


class PolicyPublished(Contract):
    """A policy version: its weights (safetensors bytes) and the architecture they must fit."""

    version: str = Field(pattern=POLICY_VERSION_PATTERN, description="Content hash of the weights")
    hidden: int = Field(ge=1, le=1024, description="Hidden width of the policy's layers")
    layers: int = Field(ge=1, le=16, description="Message-passing layers")
    features: list[str] = Field(description="Node feature names, in the order the policy reads them")
    families: list[str] = Field(description="Blueprint families of the family head, in order")
    trained_on: str = Field(max_length=2000, description="What it learned from: synthetic teacher, or run ids")
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    checksum: str = Field(pattern=SHA256_PATTERN, description="sha256 of the artifact")
    artifact: bytes = Field(max_length=MAX_POLICY_ARTIFACT_BYTES, description="safetensors state dict (weights only)")


class PolicyPromoted(Contract):
    """Makes ``version`` the promoted policy: the one that decides runs naming no version."""

    version: str = Field(pattern=POLICY_VERSION_PATTERN)
    promoted_by: str = Field(default="user", min_length=1, max_length=100)
    reason: str = Field(default="", max_length=1000)
    promoted_at: UtcDatetime = Field(default_factory=utc_now)
