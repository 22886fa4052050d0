"""Coalesced reads: one read by key in flight at a time; keys asked for meanwhile go together in the next.

The read-side counterpart of group commit (group_commit.py). Keys that arrive while a read is in flight
wait for it and are then fetched together, so batches grow as fast as the database is slow: recovering
many entities after a restart costs a few multi-key queries instead of one query per entity. An idle
reader reads a lone key at once, unless keys arrive so often that another is expected within the wait
it was given (`wait_for_company`): then it waits that long (or until the batch is full) first, so that
under steady load reads share round trips instead of going one by one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from chiefofstate.aio.early_wake import EarlyWake
from chiefofstate.core.batching import ArrivalRate, no_wait
from chiefofstate.core.errors import copy_for_another_caller

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
W = TypeVar("W")

DEFAULT_MAX_BATCH = 256


class KeyQueue(Generic[K, W]):
    """Keys waiting for the next fetch, oldest first, each with the waiters that asked for it.

    A key asked for twice before its fetch is queued once and answers both waiters.
    """

    def __init__(self) -> None:
        self._waiters: collections.OrderedDict[K, list[W]] = collections.OrderedDict()

    def __len__(self) -> int:
        """Distinct keys waiting."""
        return len(self._waiters)

    def add(self, key: K, waiter: W) -> None:
        self._waiters.setdefault(key, []).append(waiter)

    def remove(self, key: K, waiter: W) -> None:
        """Forget one waiter (it stopped waiting); its key leaves the queue with its last waiter."""
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        with contextlib.suppress(ValueError):  # already taken into a batch
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[key]

    def take(self, limit: int) -> dict[K, list[W]]:
        """The oldest `limit` keys (at most) with their waiters, removed from the queue."""
        if limit < 1:
            raise ValueError("a batch must take at least one key")
        keys = list(itertools.islice(self._waiters, limit))
        return {key: self._waiters.pop(key) for key in keys}

    def take_all(self) -> dict[K, list[W]]:
        taken = dict(self._waiters)
        self._waiters.clear()
        return taken


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failed read, as a waiter's result. Waiters never get an exception set on their future: a caller
    cancelled just as its answer arrived must not leave a "never retrieved" exception behind."""

    error: Exception


class CoalescingReader(Generic[K, V]):
    """Answers `get(key)` through `fetch(keys)`, one fetch at a time, at most `max_batch` keys per fetch.

    `fetch` returns a value for every key it was given. When it raises, every caller of that batch
    raises (each its own copy of) the error; callers of other batches are unaffected. The reader owns
    at most one task, started when a key arrives at an idle reader and ended when the queue is empty;
    `close()` cancels it, and everyone still waiting then gets `stopped()`.
    """

    def __init__(
        self,
        fetch: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        stopped: Callable[[], Exception],
        max_batch: int = DEFAULT_MAX_BATCH,
        name: str = "coalescing-reader",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fetch = fetch
        self._stopped = stopped
        self._max_batch = max_batch
        self._name = name
        self._queue: KeyQueue[K, asyncio.Future[V | _Failed]] = KeyQueue()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._arrivals = ArrivalRate()
        self._wait_s: Callable[[], float] = no_wait
        self._company = EarlyWake()

    def wait_for_company(self, wait_s: Callable[[], float]) -> None:
        """Before a fetch from idle, wait at most `wait_s()` seconds for other keys when they arrive often
        enough that one is expected within that time; a full batch ends the wait."""
        self._wait_s = wait_s

    @property
    def waiting(self) -> int:
        """Distinct keys queued for the next fetch (not counting the fetch in flight)."""
        return len(self._queue)

    async def get(self, key: K) -> V:
        if self._closed:
            raise self._stopped()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[V | _Failed] = loop.create_future()
        self._arrivals.arrived(loop.time())
        self._queue.add(key, waiter)
        if len(self._queue) >= self._max_batch:
            self._company.wake()
        if self._runner is None:
            # Scheduled, not run: callers arriving in this same turn of the loop join the first fetch.
            self._runner = loop.create_task(self._fetch_until_empty(), name=self._name)
        try:
            outcome = await waiter
        except asyncio.CancelledError:
            # Only this caller stops waiting: its key leaves the queue unless someone else wants it,
            # and a fetch already in flight skips its cancelled future.
            self._queue.remove(key, waiter)
            raise
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome

    async def close(self) -> None:
        """Stop reading: cancel the fetch in flight; every waiting caller gets `stopped()`."""
        self._closed = True
        runner = self._runner
        if runner is not None:
            runner.cancel()
            # wait() neither raises the runner's CancelledError nor swallows our own cancellation.
            await asyncio.wait([runner])
        _fail_all(self._queue.take_all(), self._stopped())

    async def _fetch_until_empty(self) -> None:
        batch: dict[K, list[asyncio.Future[V | _Failed]]] = {}
        try:
            wait_s = self._wait_s()
            if len(self._queue) < self._max_batch and self._arrivals.worth_waiting(wait_s):
                await self._company.at_most(wait_s)
            while self._queue:
                batch = self._queue.take(self._max_batch)
                try:
                    values = await self._fetch(list(batch))
                except Exception as exc:
                    _fail_all(batch, exc)
                else:
                    for key, waiters in batch.items():
                        if key in values:
                            _resolve_all(waiters, values[key])
                        else:
                            missing = LookupError(f"the batch read returned nothing for {key!r}")
                            _fail_all({key: waiters}, missing)
                batch = {}
        finally:
            # Cleared with no await since the queue was last seen empty, so no caller is left unserved.
            self._runner = None
            if batch or self._queue:  # cancelled (closed) or a BaseException: nobody will fetch these
                stopped = self._stopped()
                _fail_all(batch, stopped)
                _fail_all(self._queue.take_all(), stopped)


def _resolve_all(waiters: list[asyncio.Future[V | _Failed]], value: V) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(value)


def _fail_all(batch: Mapping[K, list[asyncio.Future[V | _Failed]]], error: Exception) -> None:
    first = True
    for waiter in itertools.chain.from_iterable(batch.values()):
        if not waiter.done():
            waiter.set_result(_Failed(error if first else copy_for_another_caller(error)))
            first = False
