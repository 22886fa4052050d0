"""Counters and histograms recorded on the event loop, exposed through a prometheus_client registry.

prometheus_client's own metrics take a lock on every increment (two for a histogram observation) so
that any thread may record. Everything the node records per request happens on its one event-loop
thread, and the exposition is produced on that thread too, so these families keep plain numbers
instead: an observation is a bisection and two additions. On the command path, with about a dozen
recordings per command, that is most of the metrics' cost. They look the same to a scraper: same
names, labels, buckets and `_created` series as prometheus_client's Counter and Histogram.

Record only from the event-loop thread (a scrape from another thread would at worst read a histogram
between its count and its sum).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# The `le` label as prometheus_client writes it ("0.005", "1.0", "+Inf"); the function is untyped.
_bucket_label = cast(Callable[[float], str], floatToGoString)


class CounterSeries:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Buckets are upper bounds, inclusive ("le"): the first bound >= value takes it.
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value


S = TypeVar("S", CounterSeries, HistogramSeries)


class _Family(Collector, Generic[S]):
    """A family's series by label values, each made on first use. It registers itself once its fields
    exist; `describe` names the family, so a registry refuses a second family of the same name whether
    or not it collects to describe."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        new_series: Callable[[], S],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._new_series: Callable[[], S] = new_series
        self._series: dict[tuple[str, ...], S] = {}
        registry.register(self)

    def labels(self, *values: str) -> S:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            series = self._series[values] = self._new_series()
        return series


class LoopCounter(_Family[CounterSeries]):
    """A counter family; give the name without `_total`, as with prometheus_client's Counter."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry, CounterSeries)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._series.items():
            family.add_metric(list(values), series.value, created=series.created)
        yield family


class LoopHistogram(_Family[HistogramSeries]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = self._bounds = tuple(sorted(float(bound) for bound in buckets))
        super().__init__(name, documentation, labelnames, registry, lambda: HistogramSeries(bounds))

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._series.items():
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self._bounds, float("inf")), series.counts, strict=True):
                cumulative += count
                buckets.append((_bucket_label(bound), cumulative))
            family.add_metric(list(values), buckets, series.sum)
            # HistogramMetricFamily has no `created` argument; prometheus_client's Histogram adds this.
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, series.created))
        yield family
