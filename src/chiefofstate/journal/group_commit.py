"""Group commit: one writer task turns many commands' appends into one journal transaction.

When the writer is idle and no other command is about to append, a request is written at once (no added
latency for a lone client); requests that arrive while a flush is in flight wait for it and then go
together in the next one, so batches grow as fast as the database is slow (docs/architecture.md, "Group
commit").

One refinement, for a database that is fast next to the write handler: while other commands are between
HandleCommand and their append, a flush first waits a little for them (journal/deciding.py), so that their
appends share its round trip. Each round trip costs a socket write and read on the node and a commit in
the database whatever its size, so under concurrent load fewer, larger batches take CPU off every
command. The wait ends as soon as no other command is deciding, when the batch is full, or after a
budget in proportion to how long commands take to decide (core/batching.py, at most MAX_WAIT_S): a batch
then adds at most a bounded share to a command's latency, whatever the load, and a lone client never
waits.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

from opentelemetry.trace import Link

from chiefofstate.aio.early_wake import EarlyWake
from chiefofstate.core.batching import MAX_WAIT_S
from chiefofstate.core.errors import ResourceExhausted, StoreUnavailable, copy_for_another_caller
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.ports.journal import AppendRequest, Journal
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import SPAN_JOURNAL_BATCH, TRACING_OFF, Tracing


@dataclass(slots=True)
class _Pending:
    request: AppendRequest
    link: Link | None  # the caller's span, linked from the batch span that carries the request
    # Resolved with the request's outcome (None or the exception to raise) rather than with an exception
    # set on the future: a caller that stopped waiting must not leave a "never retrieved" exception.
    outcome: asyncio.Future[Exception | None]


class GroupCommitWriter:
    """Owns one writer task: `start()` it, `await close()` it (what is queued is still written)."""

    def __init__(
        self,
        journal: Journal,
        max_batch: int = 512,
        max_pending: int = 10_000,
        *,
        tracing: Tracing = TRACING_OFF,
        metrics: NodeMetrics | None = None,
        deciding: DecidingCommands | None = None,
    ) -> None:
        """`deciding` tells a flush whether to wait for appends on their way, and for how long at most
        (never more than MAX_WAIT_S); without it a flush never waits."""
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self._journal = journal
        self._tracing = tracing
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._deciding = deciding if deciding is not None else DecidingCommands()
        self._lingering = EarlyWake()  # a flush waiting for appends on their way

    @property
    def pending(self) -> int:
        """Requests waiting for a flush (not counting the batch in flight)."""
        return len(self._queue)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the journal writer is already started")
        self._task = asyncio.get_running_loop().create_task(self._write_until_closed(), name="journal-writer")

    def submit(self, request: AppendRequest) -> asyncio.Future[Exception | None]:
        """Queue one command's events; the future resolves once they are committed, with None, or with
        the request's failure as its result (never as an exception set on the future).

        Once queued, a request is written whatever becomes of the caller: a caller that stops waiting
        must treat the outcome as unknown (docs/contract.md §3.14). Callers that may be cancelled while
        waiting
        should await it through `asyncio.shield`, since cancelling an awaited future cancels it.
        """
        if self._closing or self._task is None or self._task.done():
            raise StoreUnavailable("the journal writer is not running")
        if len(self._queue) >= self._max_pending:
            raise ResourceExhausted(f"journal writer queue is full ({len(self._queue)} pending)")
        outcome: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, self._tracing.current_link(), outcome))
        self._wakeup.set()
        if self._lingering.waiting and (
            len(self._queue) >= self._max_batch or not self._deciding.appends_coming()
        ):
            self._lingering.wake()  # the batch is full, or this was the last append on its way
        return outcome

    async def close(self) -> None:
        """Stop taking requests, write everything already queued, then stop the writer task."""
        self._closing = True
        self._wakeup.set()
        self._lingering.wake()
        if self._task is None:
            return
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled (and the writer with it)
            # Someone else cancelled the writer: it has stopped, which is all close() has to ensure.

    async def _write_until_closed(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if (
                    len(self._queue) < self._max_batch
                    and not self._closing
                    and self._deciding.appends_coming()
                ):
                    await self._lingering.at_most(min(self._deciding.append_wait_s(), MAX_WAIT_S))
                size = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(size)]
                await self._flush_batch(batch)
        finally:
            # Reached on cancellation (or a bug): nobody will write what is still queued.
            stopped = StoreUnavailable("the journal writer stopped before writing this request")
            while self._queue:
                _resolve(self._queue.popleft(), stopped)

    async def _flush_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            with self._tracing.span(
                SPAN_JOURNAL_BATCH,
                attributes={"cos.batch_size": len(batch)},
                links=[pending.link for pending in batch if pending.link is not None],
            ):
                outcomes = await self._journal.append_batch([pending.request for pending in batch])
        except asyncio.CancelledError:
            unknown = StoreUnavailable("the journal writer stopped while writing; the outcome is unknown")
            for pending in batch:
                _resolve(pending, unknown)
            raise
        except Exception as exc:  # the whole transaction failed: every request in it shares the cause
            outcomes = [exc, *(copy_for_another_caller(exc) for _ in batch[1:])]
        if self._metrics is not None:
            succeeded = all(outcome is None for outcome in outcomes)
            self._metrics.observe_append_batch(len(batch), time.perf_counter() - started, succeeded=succeeded)
        if len(outcomes) != len(batch):
            mismatch = StoreUnavailable(
                f"the journal answered {len(outcomes)} outcomes for {len(batch)} requests; outcome unknown"
            )
            outcomes = [mismatch] * len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            _resolve(pending, outcome)


def _resolve(pending: _Pending, outcome: Exception | None) -> None:
    if not pending.outcome.done():
        pending.outcome.set_result(outcome)
