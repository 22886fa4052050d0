"""Read-side series for Prometheus: states and counts read at scrape time, offsets, journal heads and
lag refreshed by one owned task (a scrape cannot wait for the database)."""

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
            "cos_read_side_projections",
            "Projections per read side in each state (running, paused, halted, stopped, restarting).",
            runtime.state_counts,
        )
        metrics.read_at_scrape(
            "cos_read_side_events_delivered",
            "Events a read handler accepted.",
            lambda: runtime.event_counts("delivered"),
            monotonic=True,
        )
        metrics.read_at_scrape(
            "cos_read_side_events_skipped",
            "Events skipped by a failure policy or an operator.",
            lambda: runtime.event_counts("skipped"),
            monotonic=True,
        )
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
