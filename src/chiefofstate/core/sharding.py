"""Which shard an entity belongs to, computed exactly as upstream does (docs/contract.md §4.4).

Upstream tags every journal row with `Math.abs(entityId.hashCode()) % numShards`, so the same
arithmetic is needed here to keep read-side offsets of an existing journal meaningful.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from operator import mul

_MASK_32 = 0xFFFFFFFF
_INT_MIN = -(2**31)
_PRECOMPUTED_UNITS = 512  # entity ids are at most 255 characters, each at most two UTF-16 units
_POWERS_OF_31 = [pow(31, k, 1 << 32) for k in range(_PRECOMPUTED_UNITS)]  # 31**k mod 2**32
_BIG_ENDIAN = sys.byteorder == "big"


def _utf16_units(text: str) -> Sequence[int]:
    if text.isascii():
        return text.encode("ascii")  # one byte per unit, and the same values
    units = array("H", text.encode("utf-16-le", "surrogatepass"))
    if _BIG_ENDIAN:
        units.byteswap()
    return units


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode()`: 31-based over UTF-16 code units, as a signed 32-bit int.

    The last unit is multiplied by 31**0, the one before by 31**1, and so on, so the hash is one sum
    of products with precomputed powers instead of a Python loop per unit: it runs for every entity
    that enters the cache, and this is about three times faster."""
    units = _utf16_units(text)
    if len(units) <= _PRECOMPUTED_UNITS:
        value: int = sum(map(mul, reversed(units), _POWERS_OF_31)) & _MASK_32
    else:
        value = 0
        for unit in units:
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
