"""Wake-ups from appends made by any node: LISTEN on the channel the PostgreSQL journal notifies.

Every append transaction sends `pg_notify(APPEND_CHANNEL, '<shard>,<shard>…')`, delivered at commit.
One dedicated connection per node and purpose listens and wakes the readers of those shards: the read
sides' projections, and the subscription feed (subscription/feed.py). When the connection drops, it is
opened again after a pause and every shard is woken once, since notifications sent meanwhile are lost; the
projections' slow poll covers the gap until then, and the feed's subscribers get those events late.

The cluster coordinator listens the same way on the channel of lease releases and departures
(stores/postgres/cluster.py); its periodic rounds cover a lost notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.stores.postgres.datastore import ConnectionSettings, connect_dedicated
from chiefofstate.stores.postgres.journal import APPEND_CHANNEL

log = logging.getLogger("chiefofstate.readside")

RECONNECT_DELAY_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30.0
HEALTH_CHECK_TIMEOUT_S = 5.0


def parse_shards(payload: str) -> list[int]:
    shards = []
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            shards.append(int(part))
    return shards


def _set_on_termination(lost: asyncio.Event, connection: Any) -> None:
    lost.set()


class AppendListener:
    def __init__(
        self,
        settings: ConnectionSettings,
        wake_shards: Callable[[Iterable[int]], None],
        wake_all: Callable[[], None],
        reconnect_delay_s: float = RECONNECT_DELAY_S,
        purpose: str = "read-side",
        channel: str = APPEND_CHANNEL,
    ) -> None:
        self._settings = settings
        self._wake_shards = wake_shards
        self._wake_all = wake_all
        self._reconnect_delay_s = reconnect_delay_s
        self._purpose = purpose
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name=f"{self._purpose} LISTEN")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._wake_shards(parse_shards(payload))

    async def _listen_forever(self) -> None:
        settings = self._settings
        while True:
            connection: Any = None
            try:
                connection = await connect_dedicated(settings, application_name="chiefofstate-listen")
                lost = asyncio.Event()
                connection.add_termination_listener(functools.partial(_set_on_termination, lost))
                await connection.add_listener(self._channel, self._notified)
                self.connected.set()
                # Anything appended while we were not listening was not announced to us.
                self._wake_all()
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(HEALTH_CHECK_INTERVAL_S):
                            await lost.wait()
                    except TimeoutError:
                        # A silently dead network never ends the connection; a query does find out.
                        await connection.fetchval("SELECT 1", timeout=HEALTH_CHECK_TIMEOUT_S)
                log.warning(
                    "%s LISTEN connection lost; reconnecting in %gs", self._purpose, self._reconnect_delay_s
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("%s LISTEN connection failed (%s); retrying", self._purpose, error)
            finally:
                self.connected.clear()
                if connection is not None:
                    # terminate() is synchronous, so it also runs when we are being cancelled.
                    connection.terminate()
            await asyncio.sleep(self._reconnect_delay_s)
