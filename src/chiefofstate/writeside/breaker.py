"""Wraps any write handler in the shared write-side circuit breaker (docs/contract.md §3.11)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from chiefofstate.core.breaker import CircuitBreaker
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.ports.write_handler import WriteHandler

Response = TypeVar("Response")


class BreakerGuardedWriteHandler:
    """One breaker shared by HandleCommand and HandleEvent; any failed call counts, as upstream."""

    def __init__(
        self, inner: WriteHandler, breaker: CircuitBreaker, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._breaker = breaker
        self._clock = clock

    async def _guarded(self, call: Callable[[], Awaitable[Response]]) -> Response:
        trial = self._breaker.before_call(self._clock())
        started = self._clock()
        try:
            result = await call()
        except Exception:
            now = self._clock()
            self._breaker.record(succeeded=False, duration_s=now - started, now=now)
            raise
        except BaseException:
            # Cancelled (the caller went away, the node stops): that says nothing about the handler's
            # health, but a half-open trial left "in flight" would refuse every later call for ever.
            if trial:
                self._breaker.abandon()
            raise
        now = self._clock()
        self._breaker.record(succeeded=True, duration_s=now - started, now=now)
        return result

    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse:
        return await self._guarded(lambda: self._inner.handle_command(request, headers, timeout_s))

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        return await self._guarded(lambda: self._inner.handle_event(request, timeout_s, headers))

    async def close(self) -> None:
        await self._inner.close()
