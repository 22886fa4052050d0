"""Metrics pushed over OTLP, beside the Prometheus endpoint, when `OTEL_METRICS_EXPORTER` includes
`otlp` (docs/operations.md, "Metrics over OTLP").

Upstream's OpenTelemetry agent pushes its metrics to the collector a team already runs, under the
semantic-convention names; this module gives the same instruments:

* `rpc.server.duration` (ms) for every gRPC call the node serves, with `rpc.system`, `rpc.service`,
  `rpc.method` and `rpc.grpc.status_code`;
* `rpc.client.duration` (ms) for calls to gRPC write handlers;
* `http.server.request.duration` (s) for the HTTP API and `http.client.request.duration` (s) for calls
  to HTTP write handlers;
* process metrics (`process.cpu.time`, `process.memory.usage`, `process.thread.count`,
  `cpython.gc.collections`);
* and the node's own documented metrics (`cos_*`, `grpc_server_*`), read from its Prometheus registry
  at each export: counters and gauges as they are, each histogram as its `_count` and `_sum`.

The SDK's instruments cost tens of microseconds per recorded value (attribute validation and hashing on
every call), several per command; the histograms here are aggregated the way the node's Prometheus
series are (a series bound once per attribute set, a bucket increment per value) and handed to the
SDK's OTLP exporter as cumulative data points, by a task on the event loop every
`OTEL_METRIC_EXPORT_INTERVAL`; the network call runs in a worker thread. The exporter's endpoint,
headers, TLS and compression are its standard `OTEL_EXPORTER_OTLP_*` variables.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.gen.chief_of_state.v1 import writeside_pb2

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import Metric, MetricExporter, MetricsData
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("chiefofstate.telemetry")

Attributes = Mapping[str, str | int]

_WRITE_SIDE_SERVICE = writeside_pb2.DESCRIPTOR.services_by_name["WriteSideHandlerService"].full_name


def _status_number(code_name: str) -> int:
    """The number `rpc.grpc.status_code` carries for a status name (UNKNOWN's for a name that is none)."""
    code = grpc.StatusCode.__members__.get(code_name, grpc.StatusCode.UNKNOWN)
    return int(code.value[0])


# The SDK's default explicit buckets (milliseconds for the rpc.* durations), and the semantic
# conventions' advice for the http.* ones (seconds).
_MS_BOUNDS = (
    0.0,
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    100.0,
    250.0,
    500.0,
    750.0,
    1000.0,
    2500.0,
    5000.0,
    7500.0,
    10000.0,
)
_S_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class DurationSeries:
    """One attribute set of a histogram: cumulative bucket counts, sum, count, min and max."""

    __slots__ = ("attributes", "bounds", "count", "counts", "high", "low", "total")

    def __init__(self, attributes: Attributes, bounds: tuple[float, ...]) -> None:
        self.attributes = attributes
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0
        self.low = float("inf")
        self.high = float("-inf")

    def record(self, value: float) -> None:
        # bucket i holds (bounds[i-1], bounds[i]], the last one everything above the highest bound
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value


class DurationHistogram:
    """A histogram instrument: its series by a key the caller builds cheaply, each bound once."""

    def __init__(self, name: str, unit: str, description: str, bounds: tuple[float, ...]) -> None:
        self.name, self.unit, self.description, self.bounds = name, unit, description, bounds
        self.series: dict[tuple[object, ...], DurationSeries] = {}

    def bound(self, key: tuple[object, ...], attributes: Callable[[], Attributes]) -> DurationSeries:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = DurationSeries(attributes(), self.bounds)
        return series


class OtlpMetrics:
    """The node's OTLP metrics: recorded on the event loop, pushed by `start`'s task."""

    def __init__(
        self,
        service_name: str,
        registry: CollectorRegistry,
        exporter: MetricExporter,
        *,
        interval_s: float = 60.0,
        timeout_s: float = 30.0,
    ) -> None:
        self._service_name = service_name
        self._registry = registry
        self._exporter = exporter
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._started_ns = time.time_ns()
        self._task: asyncio.Task[None] | None = None
        self._resource: Resource | None = None  # built on the first export (it runs the SDK's detectors)
        self.rpc_server_durations = DurationHistogram(
            "rpc.server.duration", "ms", "Duration of inbound RPCs.", _MS_BOUNDS
        )
        self.rpc_client_durations = DurationHistogram(
            "rpc.client.duration", "ms", "Duration of outbound RPCs.", _MS_BOUNDS
        )
        self.http_server_durations = DurationHistogram(
            "http.server.request.duration", "s", "Duration of HTTP server requests.", _S_BOUNDS
        )
        self.http_client_durations = DurationHistogram(
            "http.client.request.duration", "s", "Duration of HTTP client requests.", _S_BOUNDS
        )

    @classmethod
    def exporting(
        cls,
        service_name: str,
        registry: CollectorRegistry,
        protocol: str,
        interval_s: float,
        timeout_s: float,
    ) -> OtlpMetrics:
        """Pushing to the collector the OTEL_EXPORTER_OTLP_* variables name."""
        # Imported only when metrics are pushed, so a node that does not never loads the exporters.
        exporter: MetricExporter
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

            exporter = Http()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            exporter = Grpc()
        return cls(service_name, registry, exporter, interval_s=interval_s, timeout_s=timeout_s)

    # Recording: one dict lookup for the bound series and one bucket update per value.

    def rpc_server(self, service: str, method: str, code_name: str, seconds: float) -> None:
        self.rpc_server_durations.bound(
            (service, method, code_name),
            lambda: {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                "rpc.grpc.status_code": _status_number(code_name),
            },
        ).record(seconds * 1000.0)

    def write_handler_call(
        self, protocol: str, method: str, code_name: str, seconds: float, host: str, port: int
    ) -> None:
        """A call to the write handler: an RPC client call, or an HTTP POST for the HTTP protocol."""
        if protocol == "http":
            self.http_client_durations.bound(
                (method, code_name, host, port),
                lambda: {
                    "http.request.method": "POST",
                    "server.address": host,
                    "server.port": port,
                    **({} if code_name == "OK" else {"error.type": code_name}),
                },
            ).record(seconds)
            return
        self.rpc_client_durations.bound(
            (method, code_name, host, port),
            lambda: {
                "rpc.system": "grpc",
                "rpc.service": _WRITE_SIDE_SERVICE,
                "rpc.method": method,
                "rpc.grpc.status_code": _status_number(code_name),
                "server.address": host,
                "server.port": port,
            },
        ).record(seconds * 1000.0)

    def http_server(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_server_durations.bound(
            (method, route, status),
            lambda: {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
                "url.scheme": "http",
            },
        ).record(seconds)

    # Exporting

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._push_every_interval())

    async def close(self) -> None:
        """A last push of everything recorded, then the exporter is shut down."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._push()
        await asyncio.to_thread(self._exporter.shutdown)

    async def _push_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._push()

    async def _push(self) -> None:
        data = self.collect()
        try:
            await asyncio.to_thread(self._exporter.export, data, timeout_millis=self._timeout_s * 1000)
        except Exception as error:  # the exporter logs its own failures; this is anything else
            log.warning("metrics were not pushed over OTLP: %s", error)

    def collect(self) -> MetricsData:
        """Every instrument's current cumulative value, read on the event loop."""
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        now = time.time_ns()
        metrics = [
            *(
                self._histogram(histogram, now)
                for histogram in (
                    self.rpc_server_durations,
                    self.rpc_client_durations,
                    self.http_server_durations,
                    self.http_client_durations,
                )
                if histogram.series
            ),
            *_process_metrics(self._started_ns, now),
            *_registry_metrics(self._registry, self._started_ns, now),
        ]
        scope = ScopeMetrics(InstrumentationScope("chiefofstate"), metrics, "")
        if self._resource is None:
            self._resource = Resource.create({"service.name": self._service_name})
        return MetricsData([ResourceMetrics(self._resource, [scope], "")])

    def _histogram(self, histogram: DurationHistogram, now: int) -> Metric:
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
        )

        points = [
            HistogramDataPoint(
                attributes=dict(series.attributes),
                start_time_unix_nano=self._started_ns,
                time_unix_nano=now,
                count=series.count,
                sum=series.total,
                bucket_counts=list(series.counts),
                explicit_bounds=list(series.bounds),
                min=series.low,
                max=series.high,
            )
            for series in list(histogram.series.values())
        ]
        data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        return Metric(name=histogram.name, description=histogram.description, unit=histogram.unit, data=data)


def _number(
    name: str, unit: str, values: Sequence[tuple[float, Attributes]], kind: str, start: int, now: int
) -> Metric:
    """A cumulative monotonic sum (`counter`), a non-monotonic sum (`updown`) or a gauge."""
    from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum

    points = [
        NumberDataPoint(
            attributes=dict(attributes), start_time_unix_nano=start, time_unix_nano=now, value=value
        )
        for value, attributes in values
    ]
    data: Any
    if kind == "gauge":
        data = Gauge(data_points=points)
    else:
        data = Sum(
            data_points=points,
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
            is_monotonic=kind == "counter",
        )
    return Metric(name=name, description="", unit=unit, data=data)


def _process_metrics(start: int, now: int) -> list[Metric]:
    times = os.times()
    return [
        _number(
            "process.cpu.time",
            "s",
            [(times.user, {"cpu.mode": "user"}), (times.system, {"cpu.mode": "system"})],
            "counter",
            start,
            now,
        ),
        _number("process.memory.usage", "By", [(_resident_bytes(), {})], "updown", start, now),
        _number("process.thread.count", "{thread}", [(threading.active_count(), {})], "updown", start, now),
        _number(
            "cpython.gc.collections",
            "{collection}",
            [
                (stats["collections"], {"cpython.gc.generation": generation})
                for generation, stats in enumerate(gc.get_stats())
            ],
            "counter",
            start,
            now,
        ),
    ]


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        # no procfs: the peak is the best the platform offers (kilobytes on Linux)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _registry_metrics(registry: CollectorRegistry, start: int, now: int) -> list[Metric]:
    """The node's own Prometheus metrics: counters and gauges as they are, histograms as count and sum."""
    metrics: list[Metric] = []
    for family in registry.collect():
        samples: dict[str, list[tuple[float, Attributes]]] = {}
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.value, dict(sample.labels)))
        name = family.name
        if family.type == "counter" and samples.get(name + "_total"):
            metrics.append(_number(name, "", samples[name + "_total"], "counter", start, now))
        elif family.type == "gauge" and samples.get(name):
            metrics.append(_number(name, "", samples[name], "gauge", start, now))
        elif family.type == "histogram":
            metrics.extend(
                _number(name + suffix, "", samples[name + suffix], "counter", start, now)
                for suffix in ("_count", "_sum")
                if samples.get(name + suffix)
            )
    return metrics
