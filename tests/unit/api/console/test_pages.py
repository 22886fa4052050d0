"""The pure parts of the console's pages: lag in time, durations, the action form's checks."""

from __future__ import annotations

import math

import pytest

from chiefofstate.api.console.pages import done_message, duration_text, lag_seconds, operation_request
from chiefofstate.core.errors import InvalidArgument
from chiefofstate.core.readside_rules import Lag, ProjectionState
from chiefofstate.readside.runtime import ShardView


def _shard(events: int, oldest_pending_ms: int | None) -> ShardView:
    return ShardView(
        0, 10, 10 + events, Lag(events, False), ProjectionState.RUNNING, "", None, oldest_pending_ms
    )


def test_lag_in_time_is_the_age_of_the_oldest_waiting_event() -> None:
    assert lag_seconds(_shard(0, None), 50_000) == 0.0
    assert lag_seconds(_shard(3, 20_000), 50_000) == 30.0
    assert lag_seconds(_shard(3, 60_000), 50_000) == 0.0  # the writer's clock ran ahead of ours
    assert math.isnan(lag_seconds(_shard(3, None), 50_000))


def test_durations_read_in_two_units_at_most() -> None:
    assert [duration_text(s) for s in (5, 65, 3700, 90_000, math.nan)] == [
        "5s",
        "1m 5s",
        "1h 1m",
        "1d 1h",
        "unknown",
    ]


def test_the_action_form_names_what_is_wrong() -> None:
    assert operation_request({"action": "skip", "read_side": "audit", "shard": "3"}, 16) == (
        "skip",
        "audit",
        3,
    )
    assert operation_request({"action": "pause", "read_side": "audit", "shard": ""}, 16) == (
        "pause",
        "audit",
        None,
    )
    with pytest.raises(InvalidArgument, match="unknown action 'drop'"):
        operation_request({"action": "drop", "read_side": "audit"}, 16)
    with pytest.raises(InvalidArgument, match="which read side"):
        operation_request({"action": "pause", "read_side": " "}, 16)
    with pytest.raises(InvalidArgument, match="below 16"):
        operation_request({"action": "pause", "read_side": "audit", "shard": "16"}, 16)


def test_a_skip_says_which_events_it_skipped() -> None:
    assert done_message("skip", "audit", None, [(1, 40), (3, 41)]) == (
        "skip of every shard of audit done: shard 1 past event 40, shard 3 past event 41"
    )
    assert done_message("pause", "audit", 2, []) == "pause of shard 2 of audit done"
