"""Varints and the value bounds that every decoder of this layer checks.

An Avro long is a zig-zag varint of at most 10 bytes whose value fits in 64 bits: the 10th
byte carries only bit 63, so it may be 0 or 1. Values beyond what a reader can represent are
corrupt, not facts: an ``int`` outside 32 bits, a ``timestamp-micros`` outside the years
1..9999 (fastavro raises for those; so must every other consumer of the log).
"""

from __future__ import annotations

from services.core.errors import DecodeError

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
TIMESTAMP_MICROS_MIN = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
TIMESTAMP_MICROS_MAX = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
TIMESTAMP_MILLIS_MIN = -62_135_596_800_000
TIMESTAMP_MILLIS_MAX = 253_402_300_799_999

_VARINT_CACHE: dict[bytes, tuple[int, int]] = {}
_CACHE_MAX = 4096


def value_bounds(schema: object) -> tuple[int, int] | None:
    """(lowest, highest) value a reader accepts for an int/long schema, or None when any long goes."""
    if schema == "int" or isinstance(schema, dict) and schema.get("type") == "int":
        return INT_MIN, INT_MAX
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical == "timestamp-micros":
        return TIMESTAMP_MICROS_MIN, TIMESTAMP_MICROS_MAX
    if logical == "timestamp-millis":
        return TIMESTAMP_MILLIS_MIN, TIMESTAMP_MILLIS_MAX
    return None


def read_varint(b: bytes, p: int) -> tuple[int, int]:
    """The raw (still zig-zag encoded) varint at ``p`` whose first byte is >= 0x80, and the next position.

    IndexError when the bytes end inside it (callers report that as a truncated body);
    DecodeError when it is wider than 64 bits. Varints of up to 8 bytes (timestamps: every
    event of an epoch shares one) are cached by their 8-byte window, which fully determines
    them; the cache is bounded.
    """
    z1 = b[p + 1]
    if z1 < 0x80:
        return (b[p] & 0x7F) | (z1 << 7), p + 2
    key = b[p : p + 8]
    hit = _VARINT_CACHE.get(key)
    if hit is not None:
        return hit[0], p + hit[1]
    z = shift = 0
    q = p
    while True:
        byte = b[q]
        q += 1
        z |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift == 63:  # the 10th byte holds bit 63 only
            byte = b[q]
            q += 1
            if byte > 1:
                raise DecodeError(f"varint wider than 64 bits (10th byte {byte:#04x})")
            z |= byte << 63
            break
    if q - p <= 8:
        if len(_VARINT_CACHE) >= _CACHE_MAX:
            _VARINT_CACHE.clear()
        _VARINT_CACHE[key] = (z, q - p)
    return z, q
