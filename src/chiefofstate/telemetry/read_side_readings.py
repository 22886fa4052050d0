"""Read-side offsets, journal heads and lag for Prometheus, refreshed by one owned task (a scrape cannot
wait for the database). States and delivery counts are read at scrape time (readside/readings.py)."""

from __future__ import annotations

import asyncio
import logging

from chiefofstate.core.errors import CosError
from chiefofstate.readside.runtime import ReadSideRuntime, ReadSideView
from chiefofstate.tasks import cancel_and_wait
from chiefofstate.telemetry.metrics import NodeMetrics, Samples

log = logging.getLogger("chiefofstate.metrics")


class ReadSideGauges:
    def __init__(self, runtime: ReadSideRuntime, metrics: NodeMetrics, refresh_s: float = 5.0) -> None:
        self._runtime = runtime
        self._refresh_s = refresh_s
        self._views: list[ReadSideView] = []
        self._task: asyncio.Task[None] | None = None
        metrics.read_at_scrape(
            "cos_read_side_offset", "Stored offset (journal ordering) per shard.", self._offsets
        )
        metrics.read_at_scrape(
            "cos_read_side_journal_head", "Newest journal ordering per shard.", self._heads
        )
        metrics.read_at_scrape(
            "cos_read_side_lag_events",
            "Events of the shard not yet processed (counted up to a cap).",
            self._lags,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="read-side-gauges")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def refresh(self) -> None:
        self._views = await self._runtime.views()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except CosError as error:  # the store is away: keep the last values, try again later
                log.debug("read-side gauges not refreshed: %s", error)
            await asyncio.sleep(self._refresh_s)

    def _per_shard(self, value: str) -> Samples:
        for view in self._views:
            for shard in view.shards:
                labels = {"read_side": view.settings.read_side_id, "shard": str(shard.shard)}
                number = {"offset": shard.offset or 0, "head": shard.head, "lag": shard.lag.events}[value]
                yield labels, float(number)

    def _offsets(self) -> Samples:
        return list(self._per_shard("offset"))

    def _heads(self) -> Samples:
        return list(self._per_shard("head"))

    def _lags(self) -> Samples:
        return list(self._per_shard("lag"))
