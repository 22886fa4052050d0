from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from chiefofstate.core.breaker import OPEN_MESSAGE, BreakerSettings, BreakerState, CircuitBreaker
from chiefofstate.core.errors import Internal, Unavailable
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.writeside.breaker import BreakerGuardedWriteHandler


class ScriptedHandler:
    """Fails while `failing`; blocks on `gate` when one is set."""

    def __init__(self) -> None:
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.entered = asyncio.Event()

    async def handle_command(
        self, request: HandleCommandRequest, headers: Sequence[tuple[str, HeaderValue]], timeout_s: float
    ) -> HandleCommandResponse:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise Unavailable("write handler is down")
        return HandleCommandResponse()

    async def handle_event(
        self, request: HandleEventRequest, timeout_s: float, headers: Sequence[tuple[str, HeaderValue]] = ()
    ) -> HandleEventResponse:
        raise AssertionError("not used")

    async def close(self) -> None:
        return None


async def test_a_cancelled_half_open_trial_lets_the_next_call_be_the_trial() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(BreakerSettings(max_failures=1, call_timeout_s=10.0, reset_timeout_s=1.0))
    inner = ScriptedHandler()
    guarded = BreakerGuardedWriteHandler(inner, breaker, clock=lambda: clock[0])

    inner.failing = True
    with pytest.raises(Unavailable):
        await guarded.handle_command(HandleCommandRequest(), (), 1.0)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(Internal, match=OPEN_MESSAGE):
        await guarded.handle_command(HandleCommandRequest(), (), 1.0)

    clock[0] = 2.0  # past the reset timeout: the next call is the half-open trial
    inner.failing, inner.gate = False, asyncio.Event()
    inner.entered.clear()
    trial = asyncio.create_task(guarded.handle_command(HandleCommandRequest(), (), 1.0))
    await inner.entered.wait()
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial

    inner.gate = None
    assert await guarded.handle_command(HandleCommandRequest(), (), 1.0) == HandleCommandResponse()
    assert breaker.state is BreakerState.CLOSED


async def test_a_cancelled_call_that_was_not_the_trial_leaves_the_trial_alone() -> None:
    breaker = CircuitBreaker(BreakerSettings(max_failures=5, call_timeout_s=10.0, reset_timeout_s=1.0))
    inner = ScriptedHandler()
    inner.gate = asyncio.Event()
    guarded = BreakerGuardedWriteHandler(inner, breaker, clock=lambda: 0.0)
    call = asyncio.create_task(guarded.handle_command(HandleCommandRequest(), (), 1.0))
    await inner.entered.wait()
    breaker.state, breaker.opened_at = BreakerState.HALF_OPEN, 0.0
    assert breaker.before_call(0.0) is True  # another call holds the trial
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(Internal, match=OPEN_MESSAGE):
        breaker.before_call(0.0)  # still held by the other call
