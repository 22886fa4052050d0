"""Which shard an entity belongs to, computed exactly as upstream does (SPEC.md §4.4).

Upstream tags every journal row with `Math.abs(entityId.hashCode()) % numShards`, so the same
arithmetic is needed here to keep read-side offsets of an existing journal meaningful.
"""

from __future__ import annotations

_MASK_32 = 0xFFFFFFFF
_INT_MIN = -(2**31)


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode()`: 31-based over UTF-16 code units, as a signed 32-bit int."""
    encoded = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for index in range(0, len(encoded), 2):
        unit = (encoded[index] << 8) | encoded[index + 1]
        value = (31 * value + unit) & _MASK_32
    return value - (1 << 32) if value & 0x80000000 else value


def _java_remainder(dividend: int, divisor: int) -> int:
    # Java's % truncates toward zero: the sign follows the dividend.
    remainder = abs(dividend) % divisor
    return -remainder if dividend < 0 else remainder


def shard_of(entity_id: str, num_shards: int) -> int:
    """The shard number of an entity; `abs(-2**31)` stays negative as in Java."""
    hashed = java_string_hash(entity_id)
    absolute = hashed if hashed == _INT_MIN else abs(hashed)
    return _java_remainder(absolute, num_shards)
