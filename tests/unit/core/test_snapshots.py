"""When snapshots are taken and what goes afterwards (docs/contract.md §4.5, decision D1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.core.snapshots import SnapshotPolicy


def test_defaults_are_upstreams() -> None:
    policy = SnapshotPolicy()
    assert (policy.enabled, policy.frequency, policy.retain, policy.delete_events) == (True, 100, 2, False)


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (100, 100, 100),  # one event landing on a multiple
        (99, 99, None),
        (101, 101, None),
        (98, 102, 100),  # several events crossing a multiple (D1)
        (101, 199, None),
        (150, 320, 300),  # crossing two multiples: the highest one
        (1, 1, None),
    ],
)
def test_snapshot_due_at_the_highest_multiple_persisted(first: int, last: int, expected: int | None) -> None:
    assert SnapshotPolicy(frequency=100).snapshot_due(first, last) == expected


def test_no_snapshot_when_disabled_or_frequency_is_not_positive() -> None:
    assert SnapshotPolicy(enabled=False).snapshot_due(100, 100) is None
    assert SnapshotPolicy(frequency=0).snapshot_due(1, 1000) is None
    assert SnapshotPolicy(frequency=-5).snapshot_due(1, 1000) is None


def test_frequency_one_snapshots_every_command() -> None:
    policy = SnapshotPolicy(frequency=1)
    assert policy.snapshot_due(1, 1) == 1
    assert policy.snapshot_due(5, 7) == 7


def test_deletion_bound_keeps_the_newest_snapshots() -> None:
    assert SnapshotPolicy(frequency=100, retain=2).deletion_bound(500) == 300
    assert SnapshotPolicy(frequency=10, retain=1).deletion_bound(10) == 0
    assert SnapshotPolicy(frequency=100, retain=2).deletion_bound(100) < 0  # nothing to delete yet


@given(
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=0, max_value=50),
)
def test_snapshot_due_is_a_multiple_within_the_persisted_range(
    frequency: int, first: int, extra: int
) -> None:
    last = first + extra
    due = SnapshotPolicy(frequency=frequency).snapshot_due(first, last)
    multiples = [n for n in range(first, last + 1) if n % frequency == 0]
    assert due == (max(multiples) if multiples else None)
