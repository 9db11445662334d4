"""Content addresses recomputed from the bytes on consume, and the content-addressed blob folder.

A kernel id is ``k-`` + the first 32 hex digits of the artifact's sha256, a blueprint id is
``bp-`` + the first 32 of its architecture's content hash, and a kernel's artifact names its
blueprint id in its safetensors header. None of these is taken on trust from a record: each
is recomputed where the record is consumed, and a mismatch is a rejection with the reason.

``binary_ref`` is ``inline`` or ``blob:<64 lowercase hex>``; the hex is the file's name in the
blob folder, so no string from the bus is ever joined into a path. Reading a blob opens that
one name (no symlinks, regular files only), reads at most ``MAX_ARTIFACT_BYTES`` and hashes
the bytes before anything uses them. Refusals never say anything about files outside the folder.

No torch here: Urza's projections use it without loading models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from pathlib import Path

from contracts import CompiledKernel, KernelReady
from contracts.assets import blueprint_id_for
from contracts.blueprint_ir import FLOAT_BYTES, MAX_PARAMETERS
from services.core.errors import EsperError

# The largest parameter set the IR allows, as float32, plus room for the safetensors header.
MAX_ARTIFACT_BYTES = MAX_PARAMETERS * FLOAT_BYTES + 2**20
_BLOB_REF = re.compile(r"blob:([0-9a-f]{64})")
_MAX_HEADER_BYTES = 2**20


class ArtifactError(EsperError, ValueError):
    """An artifact that is corrupt, tampered with, missing, or does not fit its blueprint."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kernel_id_for(artifact: bytes) -> str:
    return kernel_id_for_checksum(sha256_hex(artifact))


def kernel_id_for_checksum(checksum: str) -> str:
    return "k-" + checksum[:32]


_FORMAT_V1 = "esper-kernel-v1"
_FORMAT_V2 = "esper-kernel-v2 "  # + the blueprint id the weights were compiled for


def format_tag(blueprint_id: str | None) -> str:
    """The artifact header's ``format`` value: v2 names the blueprint, v1 (older kernels) does not."""
    return _FORMAT_V2 + blueprint_id if blueprint_id else _FORMAT_V1


def artifact_blueprint_id(data: bytes) -> str | None:
    """The blueprint id a safetensors artifact names in its header metadata (None when it names none)."""
    if len(data) < 8:
        return None
    (length,) = struct.unpack_from("<Q", data)
    if length > min(_MAX_HEADER_BYTES, len(data) - 8):
        return None
    try:
        header = json.loads(data[8:8 + length])
    except (UnicodeDecodeError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    value = metadata.get("format") if isinstance(metadata, dict) else None
    if isinstance(value, str) and value.startswith(_FORMAT_V2):
        return value[len(_FORMAT_V2):]
    return None


def ready_problem(ready: KernelReady) -> str | None:
    """Why a KernelReady's kernel cannot be what it claims (None when its ids agree with its checksum)."""
    kernel = ready.kernel
    if kernel is None:
        return None
    if kernel.blueprint_id != ready.blueprint_id:
        return f"kernel {kernel.kernel_id} belongs to {kernel.blueprint_id}, not to {ready.blueprint_id}"
    if kernel.kernel_id != kernel_id_for_checksum(kernel.checksum):
        return f"kernel_id {kernel.kernel_id} is not the content address of its checksum"
    return None


def kernel_problem(kernel: CompiledKernel) -> str | None:
    """Why a library entry cannot be what it claims, from the record alone (None when it can).

    Inline artifacts are hashed here; a blob's bytes are hashed when it is read.
    """
    metadata = kernel.metadata
    if metadata.kernel_id != kernel.kernel_id or metadata.blueprint_id != kernel.blueprint_id:
        return f"kernel {kernel.kernel_id}: its metadata describes another kernel ({metadata.kernel_id})"
    if kernel.kernel_id != kernel_id_for_checksum(metadata.checksum):
        return f"kernel_id {kernel.kernel_id} is not the content address of its checksum"
    if kernel.binary_ref != "inline" and kernel.binary_ref != f"blob:{metadata.checksum}":
        return f"kernel {kernel.kernel_id}: binary_ref does not name its checksum"
    if kernel.architecture is not None:
        if blueprint_id_for(kernel.architecture) != kernel.blueprint_id:
            return f"kernel {kernel.kernel_id}: blueprint_id is not the content hash of its architecture"
        if (metadata.input_shape, metadata.output_shape) != (kernel.architecture.input_shape,
                                                            kernel.architecture.output_shape):
            return f"kernel {kernel.kernel_id}: metadata shapes differ from its architecture's"
    if kernel.artifact is not None:
        return artifact_problem(kernel, kernel.artifact)
    return None


def artifact_problem(kernel: CompiledKernel, data: bytes) -> str | None:
    """Why ``data`` is not the artifact of ``kernel``: its hash, and the blueprint its header names."""
    if sha256_hex(data) != kernel.metadata.checksum:
        return f"kernel {kernel.kernel_id}: artifact bytes do not match its checksum"
    named = artifact_blueprint_id(data)
    if named is not None and named != kernel.blueprint_id:
        return f"kernel {kernel.kernel_id}: artifact was compiled for {named[:80]}, not for {kernel.blueprint_id}"
    return None


def blob_sha(binary_ref: str) -> str:
    """The sha256 a ``blob:`` reference names; ArtifactError for anything else (the ref is not echoed)."""
    match = _BLOB_REF.fullmatch(binary_ref)
    if match is None:
        raise ArtifactError("binary_ref must be 'blob:' followed by 64 lowercase hex digits (a sha256)")
    return match.group(1)


class BlobStore:
    """The content-addressed blob folder: a file's name is the sha256 of its bytes."""

    def __init__(self, directory: Path, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically, so a reader never sees half a blob); returns its ``blob:`` reference."""
        sha = sha256_hex(data)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.directory / sha)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"blob:{sha}"

    def get(self, binary_ref: str) -> bytes:
        """The verified bytes of a blob: bounded read, then hashed and compared to the name."""
        sha = blob_sha(binary_ref)
        # O_NOFOLLOW: a link in the folder cannot point outside it; O_NONBLOCK: a FIFO cannot hang us.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.directory / sha, flags)
        except FileNotFoundError:
            raise ArtifactError(f"blob {sha} is not in this machine's blob folder") from None
        except OSError:
            raise ArtifactError(f"blob {sha} cannot be opened") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"blob {sha} is not a regular file")
            if info.st_size > self.max_bytes:
                raise ArtifactError(f"blob {sha} is larger than {self.max_bytes:,} bytes")
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ArtifactError(f"blob {sha} is larger than {self.max_bytes:,} bytes")
        if sha256_hex(data) != sha:
            raise ArtifactError(f"blob {sha} is corrupt: its bytes do not hash to its name")
        return data
