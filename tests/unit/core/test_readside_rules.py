"""The pure read-side rules: failure policies, replay schedule, backoff, autoStart, state and lag."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.api.readside_manager import summarise_states
from chiefofstate.core.readside_rules import (
    REPLAY_RETRIES,
    AfterFailure,
    Backoff,
    BootAction,
    FailurePolicy,
    ProjectionState,
    after_failure,
    boot_action,
    check_shard,
    lag,
    projection_state,
    restarts_after_store_errors,
)
from chiefofstate.ports.read_handler import header_value


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("", FailurePolicy.STOP),
        ("  ", FailurePolicy.STOP),
        ("stop", FailurePolicy.STOP),
        ("Skip", FailurePolicy.SKIP),
        ("REPLAY_SKIP", FailurePolicy.REPLAY_SKIP),
        ("replay_stop", FailurePolicy.REPLAY_STOP),
        ("REPLAY-SKIP", None),  # upstream's validator rejects the dashed spelling
        ("retry", None),
    ],
)
def test_policy_names_are_upstreams(text: str, policy: FailurePolicy | None) -> None:
    assert FailurePolicy.parse(text) is policy


def test_replay_policies_allow_six_attempts_in_all() -> None:
    assert REPLAY_RETRIES == 5
    for attempt in range(1, 6):
        assert after_failure(FailurePolicy.REPLAY_SKIP, attempt) is AfterFailure.RETRY
        assert after_failure(FailurePolicy.REPLAY_STOP, attempt) is AfterFailure.RETRY
    assert after_failure(FailurePolicy.REPLAY_SKIP, 6) is AfterFailure.SKIP
    assert after_failure(FailurePolicy.REPLAY_STOP, 6) is AfterFailure.HALT


def test_stop_and_skip_decide_after_the_first_failure() -> None:
    assert after_failure(FailurePolicy.STOP, 1) is AfterFailure.HALT
    assert after_failure(FailurePolicy.SKIP, 1) is AfterFailure.SKIP


def test_only_the_skipping_policies_restart_after_store_errors() -> None:
    assert [policy for policy in FailurePolicy if restarts_after_store_errors(policy)] == [
        FailurePolicy.SKIP,
        FailurePolicy.REPLAY_SKIP,
    ]


def test_backoff_doubles_from_three_to_thirty_seconds() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, 0.0) for n in range(6)] == [3.0, 6.0, 12.0, 24.0, 30.0, 30.0]


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0.0, max_value=0.999999))
def test_backoff_jitter_stays_within_twenty_percent(restarts: int, unit: float) -> None:
    backoff = Backoff()
    base = min(30.0, 3.0 * 2 ** min(restarts, 32))
    assert base <= backoff.delay(restarts, unit) < base * 1.2


@pytest.mark.parametrize(
    ("auto_start", "paused", "action"),
    [
        (False, {}, BootAction.PAUSE_ALL),
        (False, {0: False}, BootAction.PAUSE_ALL),
        (True, {0: True, 1: True, 2: True, 3: True}, BootAction.RESUME_ALL),
        (True, {0: True, 1: True, 2: True}, BootAction.KEEP),  # shard 3 has no flag: not paused
        (True, {0: True, 1: False, 2: True, 3: True}, BootAction.KEEP),
        (True, {}, BootAction.KEEP),
    ],
)
def test_auto_start_at_boot(auto_start: bool, paused: dict[int, bool], action: BootAction) -> None:
    assert boot_action(auto_start, paused, 4) is action


def test_paused_wins_over_halted_and_disabled_over_everything() -> None:
    flags = {"paused": True, "halted": True, "stopped": True, "restarting": True}
    assert projection_state(enabled=False, **flags) is ProjectionState.DISABLED
    assert projection_state(enabled=True, **flags) is ProjectionState.PAUSED
    assert projection_state(enabled=True, **{**flags, "paused": False}) is ProjectionState.HALTED
    assert (
        projection_state(enabled=True, paused=False, halted=False, stopped=False, restarting=False)
        is ProjectionState.RUNNING
    )


def test_lag_is_capped_and_says_so() -> None:
    assert str(lag(12, 100)) == "12" and not lag(12, 100).capped
    assert str(lag(100, 100)) == "100+" and lag(100, 100).capped


def test_shards_out_of_range_are_reported() -> None:
    assert check_shard(0, 16) is None and check_shard(15, 16) is None
    assert check_shard(16, 16) == "cluster_shard_number must be between 0 and 15 (got 16)"


def test_header_values_become_ascii_as_upstreams_java_client_sends_them() -> None:
    assert header_value("account-1") == "account-1"
    assert header_value("é-1") == "?-1"
    assert header_value("😀") == "??"  # two UTF-16 units
    assert header_value("a\nb") == "a?b"


def test_state_trailer_groups_shards_into_ranges() -> None:
    states = {shard: ProjectionState.RUNNING for shard in range(16)}
    states[3] = ProjectionState.HALTED
    states[9] = ProjectionState.PAUSED
    assert summarise_states(states) == "running=0-2,4-8,10-15;halted=3;paused=9"


def test_append_notifications_name_the_shards_to_wake() -> None:
    from chiefofstate.stores.postgres.wakeups import parse_shards

    assert parse_shards("3,7") == [3, 7]
    assert parse_shards("") == [] and parse_shards("x,2,") == [2]
