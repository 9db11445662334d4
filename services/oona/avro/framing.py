"""Avro single-object framing: ``C3 01`` + the writer schema's 8-byte CRC-64-AVRO fingerprint + body."""

from __future__ import annotations

from services.core.errors import DecodeError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HEADER_LEN = 10


def single_object_fingerprint(data: bytes | None) -> bytes:
    """The writer schema's 8-byte fingerprint from a single-object header; DecodeError if there is none
    (a tombstone's ``None`` value included)."""
    if data is None or len(data) < HEADER_LEN or data[:2] != SINGLE_OBJECT_MAGIC:
        first = bytes(data[:2]).hex() if data else ""
        raise DecodeError(f"not Avro single-object encoded (first bytes {first or 'none'})")
    return bytes(data[2:HEADER_LEN])
