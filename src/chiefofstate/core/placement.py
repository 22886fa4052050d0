"""Which live member owns each entity shard and each read-side projection: rendezvous hashing.

Every (placement key, member) pair gets a weight, and a key belongs to the member with the highest
weight. Each node computes the same answer from the same membership without talking to the others,
and a membership change moves only the keys it must: a joining member takes keys only for itself,
and a departing member's keys spread over the rest, while every other key stays where it was.

The weights must agree across processes, machines and Python versions, or two nodes would each
believe they own the same shard: so they come from BLAKE2b, never from `hash()`, which is salted
per process for strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# Changing either of these reshuffles every shard of a running cluster during a rolling upgrade,
# when old and new nodes disagree about owners; the golden test in test_placement.py pins them.
_WEIGHT_BYTES = 8
_KEY_LENGTH_BYTES = 8


def shard_key(shard: int) -> str:
    """The placement key of entity shard `shard`."""
    if shard < 0:
        raise ValueError(f"shard number ({shard}) must not be negative")
    return f"shard:{shard}"


def read_side_key(read_side_id: str, shard: int) -> str:
    """The placement key of read side `read_side_id`'s projection of shard `shard`.

    The shard number is the last field and holds no colon, so even a read-side id containing colons
    gives a key no other (read side, shard) pair can give."""
    if shard < 0:
        raise ValueError(f"shard number ({shard}) must not be negative")
    return f"readside:{read_side_id}:{shard}"


def _encoded(text: str) -> bytes:
    # surrogatepass: a lone surrogate in an id must hash like any other text, not raise mid-rebalance
    return text.encode("utf-8", "surrogatepass")


def _key_hasher(key: str) -> hashlib.blake2b:
    # The key's length goes first so that ("ab", "c") and ("a", "bc") hash different byte strings.
    encoded_key = _encoded(key)
    return hashlib.blake2b(
        len(encoded_key).to_bytes(_KEY_LENGTH_BYTES, "big") + encoded_key, digest_size=_WEIGHT_BYTES
    )


def weight(key: str, member: str) -> int:
    """The rendezvous weight of `member` for `key`: an unsigned 64-bit integer, the same everywhere."""
    hasher = _key_hasher(key)
    hasher.update(_encoded(member))
    return int.from_bytes(hasher.digest(), "big")


def _highest(key: str, encoded_members: list[tuple[bytes, str]]) -> str:
    # Big-endian digests of equal length compare as bytes exactly as the integers of `weight` do,
    # which saves the conversion; copying the hasher saves rehashing the key once per member.
    key_hasher = _key_hasher(key)
    best_weight = b""  # shorter than any digest, so the first member always beats it
    best_member = ""
    for encoded_member, member in encoded_members:
        hasher = key_hasher.copy()
        hasher.update(encoded_member)
        member_weight = hasher.digest()
        # Equal weights (a 64-bit collision) go to the greater id, so the order of members never matters.
        if member_weight > best_weight or (member_weight == best_weight and member > best_member):
            best_weight = member_weight
            best_member = member
    return best_member


def _encode_members(members: Iterable[str]) -> list[tuple[bytes, str]]:
    return [(_encoded(member), member) for member in set(members)]


def _owner_among(key: str, encoded_members: list[tuple[bytes, str]]) -> str | None:
    return _highest(key, encoded_members) if encoded_members else None


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that owns `key`, or None when there is no member.

    Measured with timeit on CPython 3.11 on a busy two-core machine: about 4 µs for 10 members,
    roughly linear in their number. For many keys, `assign` encodes the members once and costs about
    2.7 µs per key for 10 members, so placing 1,024 shards takes about 3 ms."""
    return _owner_among(key, _encode_members(members))


def assign(keys: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """The owner of every key; empty when there is no member, since then no key has an owner."""
    encoded_members = _encode_members(members)
    if not encoded_members:
        return {}
    return {key: _highest(key, encoded_members) for key in keys}


def moved(keys: Iterable[str], before_members: Iterable[str], after_members: Iterable[str]) -> set[str]:
    """The keys whose owner differs between the two memberships, including keys that gain their
    first owner or lose their last one."""
    encoded_before = _encode_members(before_members)
    encoded_after = _encode_members(after_members)
    return {key for key in keys if _owner_among(key, encoded_before) != _owner_among(key, encoded_after)}
