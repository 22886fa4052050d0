"""How long the journal waits to gather work into one round trip (core/batching.py)."""

from __future__ import annotations

import asyncio

import pytest

from chiefofstate.aio.early_wake import EarlyWake
from chiefofstate.core.batching import APPEND_SHARE, MAX_WAIT_S, READ_SHARE, ArrivalRate, DecideTime


def test_the_waits_follow_the_decide_time_and_stop_at_the_cap() -> None:
    decide = DecideTime()
    assert decide.append_wait_s() == 0.0 and decide.read_wait_s() == 0.0  # nothing decided: no wait
    for _ in range(200):
        decide.record(0.004)
    assert decide.append_wait_s() == pytest.approx(0.004 * APPEND_SHARE, rel=0.01)
    assert decide.read_wait_s() == pytest.approx(0.004 * READ_SHARE, rel=0.01)
    assert READ_SHARE < APPEND_SHARE  # reads cannot know who is coming
    for _ in range(200):
        decide.record(1.0)  # a handler that hangs until its deadline
    assert decide.append_wait_s() == MAX_WAIT_S and decide.read_wait_s() == MAX_WAIT_S


def test_one_slow_command_moves_the_average_only_a_little() -> None:
    decide = DecideTime()
    for _ in range(200):
        decide.record(0.002)
    decide.record(1.0)
    assert decide.seconds < 0.035  # the average, not the outlier


def test_waiting_is_worth_it_only_when_another_arrival_is_expected() -> None:
    rate = ArrivalRate()
    assert not rate.worth_waiting(0.005)  # no arrivals seen yet
    now = 0.0
    for _ in range(200):
        now += 0.001  # a thousand a second
        rate.arrived(now)
    assert rate.per_second == pytest.approx(1000, rel=0.01)
    assert rate.worth_waiting(0.002)
    assert not rate.worth_waiting(0.0005)
    assert not rate.worth_waiting(0.0)
    for _ in range(200):
        now += 0.1  # then ten a second
        rate.arrived(now)
    assert not rate.worth_waiting(0.02)


async def test_an_early_wake_ends_the_wait_and_otherwise_the_time_does() -> None:
    loop = asyncio.get_running_loop()
    wait = EarlyWake()
    wait.wake()  # nobody waiting: nothing happens
    started = loop.time()
    await wait.at_most(0.01)
    assert 0.009 <= loop.time() - started < 1.0
    assert not wait.waiting

    waiter = asyncio.create_task(wait.at_most(60.0))
    await asyncio.sleep(0)
    assert wait.waiting
    with pytest.raises(RuntimeError, match="already waiting"):
        await wait.at_most(1.0)
    wait.wake()
    await asyncio.wait_for(waiter, 1.0)
    assert not wait.waiting
