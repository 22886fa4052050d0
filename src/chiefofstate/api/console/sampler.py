"""Reads the node's own metrics every few seconds into the overview's ring (samples.py)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from prometheus_client.core import Metric

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.api.console.samples import Sample, SampleRing

log = logging.getLogger("chiefofstate.console")

COMMAND_RPC = "ProcessCommand"


def sample_of(families: Iterable[Metric], at_s: float) -> Sample:
    """The figures the overview charts, out of a registry's collected families."""
    commands = errors = batch_sum = batch_count = 0.0
    buckets: dict[float, float] = {}
    delivered: dict[str, float] = {}
    for family in families:
        for name, labels, value in ((s.name, s.labels, s.value) for s in family.samples):
            if name == "cos_requests_total" and labels.get("rpc") == COMMAND_RPC:
                commands += value
                if labels.get("code") != "OK":
                    errors += value
            elif name == "cos_request_duration_seconds_bucket" and labels.get("rpc") == COMMAND_RPC:
                bound = math.inf if labels["le"] in ("+Inf", "inf") else float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif name == "cos_journal_append_batch_size_sum":
                batch_sum += value
            elif name == "cos_journal_append_batch_size_count":
                batch_count += value
            elif name == "cos_read_side_events_delivered_total":
                delivered[labels.get("read_side", "")] = value
    return Sample(
        at_s=at_s,
        commands=commands,
        errors=errors,
        latency_buckets=tuple(sorted(buckets.items())),
        batch_sum=batch_sum,
        batch_count=batch_count,
        delivered=delivered,
    )


class MetricSampler:
    """Owns the task that samples every `interval_s`; the ring keeps the last `capacity` samples."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Metric]],
        interval_s: float,
        capacity: int,
        clock: Callable[[], float],
    ) -> None:
        self.ring = SampleRing(capacity)
        self.interval_s = interval_s
        self._collect = collect
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def sample_now(self) -> None:
        # On the loop, as a Prometheus scrape is: the readings read the runtime's in-memory state.
        self.ring.add(sample_of(self._collect(), self._clock()))

    def start(self) -> None:
        self.sample_now()
        self._task = asyncio.create_task(self._run(), name="console-metric-sampler")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample_now()
            except Exception:  # a reading that fails must not end the charts for the node's life
                log.exception("console: reading the node's metrics failed")
