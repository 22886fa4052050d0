"""Lease timing: a node stops acting on a lease before the database could consider it expired."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chiefofstate.core.leases import (
    HeldLease,
    LeaseTiming,
    MemberTiming,
    expected_members_present,
    granted,
    is_usable,
    next_renewal_at,
    renewal_due,
    renewed,
    time_left,
)

DEFAULTS = LeaseTiming()


def test_default_lease_timing() -> None:
    assert (DEFAULTS.ttl_s, DEFAULTS.renew_interval_s, DEFAULTS.margin_s) == (10.0, 2.0, 2.0)
    assert DEFAULTS.usable_window_s == 8.0


def test_default_member_timing() -> None:
    member_timing = MemberTiming()
    assert (member_timing.heartbeat_interval_s, member_timing.ttl_s) == (2.0, 10.0)


@pytest.mark.parametrize(
    ("ttl_s", "renew_interval_s", "margin_s", "message"),
    [
        (0.0, 2.0, 2.0, r"lease TTL \(0\.0 s\) must be a positive, finite number of seconds"),
        (math.inf, 2.0, 2.0, r"lease TTL \(inf s\) must be a positive, finite"),
        (10.0, -1.0, 2.0, r"lease renewal interval \(-1\.0 s\) must be a positive"),
        (10.0, 2.0, math.nan, r"lease safety margin \(nan s\) must be a positive"),
        (
            10.0,
            2.0,
            10.0,
            r"lease safety margin \(10\.0 s\) must be less than the lease TTL \(10\.0 s\), .*raise the TTL",
        ),
        (
            10.0,
            2.0,
            0.05,
            r"lease safety margin \(0\.05 s\) must be at least 1% of the lease TTL \(10\.0 s\), "
            r"i\.e\. 0\.1 s, .*raise the margin",
        ),
        (
            10.0,
            3.0,
            2.0,
            r"lease renewal interval \(3\.0 s\) must be less than a third of the usable lease window "
            r"\(TTL 10\.0 s minus margin 2\.0 s = 8\.0 s\) so two renewals can fail .*renew more often",
        ),
        (10.0, 4.0, 0.5, r"lease renewal interval \(4\.0 s\) must be less than a third"),
    ],
)
def test_lease_timing_refuses_settings_that_cannot_work(
    ttl_s: float, renew_interval_s: float, margin_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LeaseTiming(ttl_s=ttl_s, renew_interval_s=renew_interval_s, margin_s=margin_s)


def test_lease_timing_accepts_settings_just_inside_the_rules() -> None:
    LeaseTiming(ttl_s=10.0, renew_interval_s=2.6, margin_s=2.0)  # 7.8 s < 8 s
    LeaseTiming(ttl_s=10.0, renew_interval_s=1.0, margin_s=0.1)  # exactly 1% of the TTL


finite_or_not = st.floats(min_value=-1.0, max_value=100.0) | st.sampled_from([math.inf, math.nan, 0.0])


@given(finite_or_not, finite_or_not, finite_or_not)
@settings(deadline=None, max_examples=200)
def test_every_accepted_lease_timing_survives_two_failed_renewals(
    ttl_s: float, renew_interval_s: float, margin_s: float
) -> None:
    try:
        timing = LeaseTiming(ttl_s=ttl_s, renew_interval_s=renew_interval_s, margin_s=margin_s)
    except ValueError:
        return
    assert 0 < timing.margin_s < timing.ttl_s
    assert timing.renew_interval_s > 0
    assert 3 * timing.renew_interval_s < timing.usable_window_s


@pytest.mark.parametrize(
    ("heartbeat_interval_s", "ttl_s", "message"),
    [
        (0.0, 10.0, r"member heartbeat interval \(0\.0 s\) must be a positive, finite number of seconds"),
        (2.0, -10.0, r"member TTL \(-10\.0 s\) must be a positive"),
        (
            4.0,
            10.0,
            r"member heartbeat interval \(4\.0 s\) must be less than a third of the member TTL \(10\.0 s\) "
            r"so two heartbeats can be lost .*send heartbeats more often or raise the TTL",
        ),
        (3.0, 9.0, r"must be less than a third"),  # exactly a third: the third heartbeat lands too late
    ],
)
def test_member_timing_refuses_settings_that_cannot_work(
    heartbeat_interval_s: float, ttl_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MemberTiming(heartbeat_interval_s=heartbeat_interval_s, ttl_s=ttl_s)


def test_a_granted_lease_is_usable_until_ttl_minus_margin_after_it_was_sent() -> None:
    lease = granted("shard:3", 7, sent_at=100.0, timing=DEFAULTS)
    assert lease == HeldLease(key="shard:3", token=7, valid_until=108.0)
    assert is_usable(lease, 100.0)
    assert is_usable(lease, math.nextafter(108.0, 0.0))
    assert not is_usable(lease, 108.0)
    assert time_left(lease, 101.5) == 6.5
    assert time_left(lease, 108.0) == 0.0
    assert time_left(lease, 500.0) == 0.0


def test_a_renewal_confirmed_late_but_sent_early_does_not_extend_the_lease() -> None:
    lease = granted("shard:3", 7, sent_at=100.0, timing=DEFAULTS)
    later = renewed(lease, sent_at=104.0, timing=DEFAULTS)
    assert later.valid_until == 112.0
    # A renewal sent at 102 but confirmed after the one sent at 104 promises only 110.
    assert renewed(later, sent_at=102.0, timing=DEFAULTS) == later


def test_a_renewal_keeps_the_key_and_token() -> None:
    lease = renewed(granted("readside:accounts:3", 41, 0.0, DEFAULTS), 5.0, DEFAULTS)
    assert (lease.key, lease.token, lease.valid_until) == ("readside:accounts:3", 41, 13.0)


def test_renewal_is_due_one_interval_after_the_send_the_validity_rests_on() -> None:
    lease = granted("shard:0", 1, sent_at=100.0, timing=DEFAULTS)
    assert next_renewal_at(lease, DEFAULTS) == 102.0
    assert not renewal_due(lease, math.nextafter(102.0, 0.0), DEFAULTS)
    assert renewal_due(lease, 102.0, DEFAULTS)
    assert time_left(lease, 102.0) == DEFAULTS.ttl_s - DEFAULTS.margin_s - DEFAULTS.renew_interval_s
    assert renewal_due(lease, 200.0, DEFAULTS)  # lapsed leases stay due
    fresh = renewed(lease, sent_at=102.5, timing=DEFAULTS)
    assert not renewal_due(fresh, 103.0, DEFAULTS)
    assert next_renewal_at(fresh, DEFAULTS) == 104.5


def test_with_default_timing_two_failed_renewals_leave_time_for_a_third() -> None:
    lease = granted("shard:0", 1, sent_at=0.0, timing=DEFAULTS)
    first_retry, second_retry, third_try = 2.0, 4.0, 6.0
    for attempt in (first_retry, second_retry, third_try):
        assert renewal_due(lease, attempt, DEFAULTS)
        assert is_usable(lease, attempt)
    assert time_left(lease, third_try) == 2.0


@st.composite
def lease_timings(draw: st.DrawFn) -> LeaseTiming:
    ttl_s = draw(st.floats(min_value=0.1, max_value=600.0))
    margin_s = draw(st.floats(min_value=ttl_s / 50, max_value=ttl_s * 0.9))  # clear of the 1% floor
    longest_interval = (ttl_s - margin_s) / 3 * 0.999  # below a third, whatever the rounding
    renew_interval_s = draw(st.floats(min_value=longest_interval / 100, max_value=longest_interval))
    return LeaseTiming(ttl_s=ttl_s, renew_interval_s=renew_interval_s, margin_s=margin_s)


seconds = st.floats(min_value=0.0, max_value=50.0)
renewal_attempts = st.lists(
    st.tuples(seconds, st.none() | seconds),  # (pause before sending, round trip, or None if it failed)
    max_size=20,
)


@given(
    lease_timings(),
    st.floats(min_value=0.0, max_value=1e6),
    seconds,
    renewal_attempts,
    st.lists(st.floats(min_value=0.0, max_value=2e6), max_size=20),
)
@settings(deadline=None, max_examples=300)
def test_a_lease_is_never_usable_past_the_latest_confirmed_send_plus_ttl_minus_margin(
    timing: LeaseTiming,
    grant_sent_at: float,
    grant_round_trip: float,
    attempts: list[tuple[float, float | None]],
    probes: list[float],
) -> None:
    """Renewals go out in order but may be confirmed in any order; at every instant the lease must be
    usable only before the latest send among those already confirmed plus ttl - margin (and, so the
    rule is not merely conservative, for exactly that long)."""
    grant_confirmed_at = grant_sent_at + grant_round_trip
    confirmations: list[tuple[float, float]] = []  # (confirmed at, sent at)
    sent_at = grant_confirmed_at
    for pause, round_trip in attempts:
        sent_at += pause
        if round_trip is not None:
            confirmations.append((sent_at + round_trip, sent_at))
    confirmations.sort(key=lambda confirmation: confirmation[0])

    lease = granted("shard:9", 3, grant_sent_at, timing)
    latest_confirmed_send = grant_sent_at
    pending = iter(confirmations)
    next_confirmation = next(pending, None)
    instants = sorted([grant_confirmed_at, *(confirmed for confirmed, _ in confirmations), *probes])
    for now in (instant for instant in instants if instant >= grant_confirmed_at):
        while next_confirmation is not None and next_confirmation[0] <= now:
            lease = renewed(lease, next_confirmation[1], timing)
            latest_confirmed_send = max(latest_confirmed_send, next_confirmation[1])
            next_confirmation = next(pending, None)
        bound = latest_confirmed_send + timing.ttl_s - timing.margin_s
        assert lease.valid_until == bound
        if is_usable(lease, now):
            assert now < bound
        assert time_left(lease, now) <= max(0.0, bound - now)


@pytest.mark.parametrize(
    ("live_member_count", "replica_count", "may_take_shards"),
    [
        (1, 1, True),
        (0, 1, True),
        (1, 0, True),
        (1, 3, False),  # alone although others are expected: most likely the first to start
        (0, 3, False),
        (2, 3, True),  # not the full count, but not alone: a shrunken cluster keeps serving
        (2, 2, True),
        (5, 3, True),
    ],
)
def test_a_node_waits_only_while_alone_when_more_are_expected(
    live_member_count: int, replica_count: int, may_take_shards: bool
) -> None:
    assert expected_members_present(live_member_count, replica_count) is may_take_shards


def test_a_negative_live_member_count_is_a_bug_not_a_cluster() -> None:
    with pytest.raises(ValueError, match=r"live member count \(-1\) must not be negative"):
        expected_members_present(-1, 3)
