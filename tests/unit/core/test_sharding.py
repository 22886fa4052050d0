"""Shard numbers must equal upstream's `Math.abs(entityId.hashCode()) % N` (docs/contract.md §4.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.core.sharding import java_string_hash, shard_of


@pytest.mark.parametrize(
    ("entity_id", "expected"),
    [(f"test-id-{n}", shard) for n, shard in enumerate([5, 4, 3, 2, 1, 0, 8, 7, 6, 5])],
)
def test_upstream_backward_compatibility_vectors(entity_id: str, expected: int) -> None:
    # The same ids and shard count upstream's own test pins for journals written since 0.5.
    assert shard_of(entity_id, 9) == expected


@pytest.mark.parametrize(
    ("entity_id", "expected"),
    [
        ("entity-1", 9),
        ("user-123", 0),
        ("order-456", 10),
        ("a", 1),
        ("é", 9),
        ("😀", 3),  # outside the BMP: two UTF-16 surrogate units
        ("polygenelubricants", 0),  # hash is -2**31, whose Java abs stays negative
    ],
)
def test_spec_vectors_with_16_shards(entity_id: str, expected: int) -> None:
    assert shard_of(entity_id, 16) == expected


@pytest.mark.parametrize(("num_shards", "expected"), [(9, -2), (30, -8), (16, 0)])
def test_an_id_hashing_to_int_min_keeps_javas_negative_shard(num_shards: int, expected: int) -> None:
    # Java: Math.abs(Integer.MIN_VALUE) is still negative and % keeps the dividend's sign, so upstream
    # tags such an entity's rows with a negative shard whenever the count is not a power of two.
    assert shard_of("polygenelubricants", num_shards) == expected


def test_java_string_hash_matches_java() -> None:
    assert java_string_hash("") == 0
    assert java_string_hash("a") == 97
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("polygenelubricants") == -(2**31)
    assert java_string_hash("😀") == 31 * 0xD83D + 0xDE00


@given(st.text(), st.integers(min_value=0, max_value=16))
def test_shards_are_in_range_for_powers_of_two(entity_id: str, exponent: int) -> None:
    num_shards = 2**exponent
    assert 0 <= shard_of(entity_id, num_shards) < num_shards


@given(st.text())
def test_hash_is_a_signed_32_bit_int(entity_id: str) -> None:
    assert -(2**31) <= java_string_hash(entity_id) < 2**31


def _java_loop(text: str) -> int:
    """Java's own left-to-right definition, unit by unit, to check the precomputed-powers sum against."""
    encoded = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for index in range(0, len(encoded), 2):
        value = (31 * value + int.from_bytes(encoded[index : index + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@given(st.text(max_size=700))
def test_hash_equals_javas_loop_for_short_and_long_strings(entity_id: str) -> None:
    # max_size reaches past the 512 precomputed units (surrogate pairs count twice)
    assert java_string_hash(entity_id) == _java_loop(entity_id)


def test_hash_of_a_string_longer_than_the_precomputed_powers() -> None:
    long_id = "x" * 600 + "😀" * 10
    assert java_string_hash(long_id) == _java_loop(long_id)
