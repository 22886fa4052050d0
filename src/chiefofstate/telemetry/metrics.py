"""Prometheus metrics of one node, in their own registry (docs/operations.md lists them all).

Latencies are recorded where they happen; counts that components already keep (entities cached,
passivations, snapshots) are read only when Prometheus scrapes, so they cost nothing per command.
Series recorded per command are bound once per label tuple and kept, and are the event loop's own
(loop_metrics.py): recording takes no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chiefofstate.telemetry.loop_metrics import CounterSeries, HistogramSeries, LoopCounter, LoopHistogram
from chiefofstate.telemetry.otlp_metrics import OtlpMetrics

# Bounded label values: a client can send any type URL, and every distinct label value is a new
# time series kept forever. Past this many distinct values the rest are counted as "other".
MAX_COMMAND_TYPES = 200
MAX_LABEL_LENGTH = 256
OTHER = "other"

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BoundedLabel:
    """Keeps at most `limit` distinct values of one label; later newcomers become `other`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if len(value) > MAX_LABEL_LENGTH:
            # The cap on distinct values bounds their number, not their length: a label is cut too.
            value = value[:MAX_LABEL_LENGTH]
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


Samples = Iterable[tuple[dict[str, str], float]]


@dataclass(frozen=True, slots=True)
class Reading:
    name: str
    documentation: str
    read: Callable[[], Samples]
    monotonic: bool  # a counter (exposed with `_total`) rather than a gauge


class _ReadAtScrape(Collector):
    """Values read from the running components when Prometheus scrapes."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def collect(self) -> Iterator[Metric]:
        for reading in self.readings:
            samples = list(reading.read())
            labels = sorted(samples[0][0]) if samples else []
            family_type = CounterMetricFamily if reading.monotonic else GaugeMetricFamily
            family = family_type(reading.name, reading.documentation, labels=labels)
            for label_values, value in samples:
                family.add_metric([label_values[name] for name in labels], value)
            yield family


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # set once the node pushes metrics over OTLP too (docs/operations.md, "Metrics over OTLP")
        self.otlp: OtlpMetrics | None = None
        self._command_type = BoundedLabel(MAX_COMMAND_TYPES)
        registry = self.registry
        self.requests = LoopCounter(
            "cos_requests_total",
            "ProcessCommand and GetState calls by outcome (gRPC status name) and command type URL.",
            ["rpc", "code", "command_type"],
            registry,
        )
        self.request_seconds = LoopHistogram(
            "cos_request_duration_seconds",
            "Time from receiving a ProcessCommand or GetState call to its reply.",
            ["rpc", "code"],
            registry,
            LATENCY_BUCKETS,
        )
        self.handler_seconds = LoopHistogram(
            "cos_write_handler_call_duration_seconds",
            "Duration of calls to the write handler, by rpc and outcome.",
            ["rpc", "code"],
            registry,
            LATENCY_BUCKETS,
        )
        self.append_seconds = LoopHistogram(
            "cos_journal_append_duration_seconds",
            "Duration of one group-commit transaction (many commands' appends).",
            ["outcome"],
            registry,
            LATENCY_BUCKETS,
        )
        self.append_batch_size = LoopHistogram(
            "cos_journal_append_batch_size",
            "Commands appended together in one group-commit transaction.",
            [],
            registry,
            _BATCH_BUCKETS,
        )
        self._append_batch_sizes = self.append_batch_size.labels()
        self.forwarded_seconds = LoopHistogram(
            "cos_cluster_forwarded_duration_seconds",
            "Requests sent on to the member owning the entity's shard, by rpc: the extra hop's time.",
            ["rpc"],
            registry,
            LATENCY_BUCKETS,
        )
        self._forwarded_series: dict[str, HistogramSeries] = {}
        self._scraped = _ReadAtScrape()
        self.registry.register(self._scraped)
        # Bound series, keyed by their label values; bounded because `command_type` is (BoundedLabel)
        # and rpc and code have a handful of values each.
        self._request_series: dict[tuple[str, str, str], tuple[CounterSeries, HistogramSeries]] = {}
        self._handler_series: dict[tuple[str, str], HistogramSeries] = {}
        self._append_ok = self.append_seconds.labels("ok")
        self._append_error = self.append_seconds.labels("error")

    def observe_request(self, rpc: str, code: str, command_type: str, seconds: float) -> None:
        key = (rpc, code, self._command_type(command_type))
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(*key),
                self.request_seconds.labels(rpc, code),
            )
        series[0].inc()
        series[1].observe(seconds)

    def observe_handler_call(self, rpc: str, code: str, seconds: float) -> None:
        key = (rpc, code)
        series = self._handler_series.get(key)
        if series is None:
            series = self._handler_series[key] = self.handler_seconds.labels(rpc, code)
        series.observe(seconds)

    def observe_append_batch(self, size: int, seconds: float, *, succeeded: bool) -> None:
        (self._append_ok if succeeded else self._append_error).observe(seconds)
        self._append_batch_sizes.observe(size)

    def observe_forwarded(self, rpc: str, seconds: float) -> None:
        series = self._forwarded_series.get(rpc)
        if series is None:
            series = self._forwarded_series[rpc] = self.forwarded_seconds.labels(rpc)
        series.observe(seconds)

    def read_at_scrape(
        self, name: str, documentation: str, read: Callable[[], Samples], *, monotonic: bool = False
    ) -> None:
        """Register a value read from a component at scrape time; `read` yields (labels, value) pairs.
        A monotonic reading is a counter: give its name without `_total`, Prometheus adds it."""
        self._scraped.readings.append(Reading(name, documentation, read, monotonic))

    def read_scalar(
        self, name: str, documentation: str, read: Callable[[], float], *, monotonic: bool = False
    ) -> None:
        self.read_at_scrape(name, documentation, lambda: [({}, float(read()))], monotonic=monotonic)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
