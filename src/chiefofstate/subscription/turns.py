"""How many subscription writes may start per turn of the event loop, and how much of its time they take.

Every stream write is a step of the event loop, and most of its cost is gRPC's own (framing, the
socket write), about what a bare grpc.aio server pays per message. With hundreds of subscribers each
event makes hundreds of writes, and two things would starve commands: a command, which needs several
turns of the loop from request to reply, would wait behind hundreds of writes on each turn; and a loop
that is never idle keeps the interpreter lock from the node's other threads (the SQLite driver's, gRPC's
completion poller) for a whole switch interval at a time, so every step they take waits.

So writes start in batches of at most `per_turn`, the others waiting first come first served, and the
gate times each batch: the writers it lets through run one after the other, between two marks it
schedules around them. After a batch that took t seconds, the next starts no sooner than
`PAUSE_PER_BUSY` × t later (at most `LONGEST_PAUSE_S`), so writes take at most about a third of a
saturated loop's time and commands keep the rest. Subscribers that this cannot serve at the event rate
fall behind and are ended by their bounds (hub.py). While the gate has no waiters, writes start at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

WRITES_PER_TURN = 32
PAUSE_PER_BUSY = 2.0
LONGEST_PAUSE_S = 0.05


class TurnGate:
    def __init__(
        self, per_turn: int = WRITES_PER_TURN, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._per_turn = per_turn
        self._clock = clock
        self._left = per_turn
        # At most one waiter per stream writer: bounded by the number of streams.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._refill_due = False
        self._batch_started_at = 0.0
        self.pauses = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def turn(self) -> None:
        """Return when this write may start: at once while the turn has passes left and nobody waits."""
        if not self.try_pass():
            await self.wait()

    def try_pass(self) -> bool:
        """Take a pass without waiting if one is free and nobody waits: the writer's common case costs a
        plain call instead of a coroutine."""
        if self._left > 0 and not self._waiters:
            self._left -= 1
            self._schedule_refill(0.0)
            return True
        return False

    async def wait(self) -> None:
        """Wait for a pass, after those already waiting (try_pass said there was none)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule_refill(0.0)
        await waiter  # a cancelled waiter is skipped by _refill

    def _schedule_refill(self, pause_s: float) -> None:
        if self._refill_due:
            return
        self._refill_due = True
        loop = asyncio.get_running_loop()
        if pause_s > 0:
            self.pauses += 1
            loop.call_later(pause_s, self._refill)
        else:
            # Scheduled now, it runs in the next turn, after every step already ready.
            loop.call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_due = False
        self._left = self._per_turn
        loop = asyncio.get_running_loop()
        if self._waiters:
            loop.call_soon(self._batch_starts)  # runs just before the writers woken below
        woken = 0
        while self._left > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._left -= 1
                woken += 1
        if woken:
            # Runs just after them, and schedules the next refill: none may be scheduled before.
            self._refill_due = True
            loop.call_soon(self._batch_ends)
        elif self._left < self._per_turn:
            self._schedule_refill(0.0)

    def _batch_starts(self) -> None:
        self._batch_started_at = self._clock()

    def _batch_ends(self) -> None:
        busy_s = self._clock() - self._batch_started_at
        self._refill_due = False
        if self._waiters:
            self._schedule_refill(min(busy_s * PAUSE_PER_BUSY, LONGEST_PAUSE_S))
        elif self._left < self._per_turn:
            self._schedule_refill(0.0)
