"""The OTLP metrics instruments (docs/operations.md, "Metrics over OTLP"), read back with the SDK's
in-memory reader."""

from __future__ import annotations

import io
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from prometheus_client import CollectorRegistry

from chiefofstate.config.tracing import tracing_settings
from chiefofstate.core.errors import ConfigError
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.otlp_metrics import OtlpMetrics


def otlp_metrics(registry: CollectorRegistry) -> OtlpMetrics:
    return OtlpMetrics("cos", registry, ConsoleMetricExporter(out=io.StringIO()))


def points(otlp: OtlpMetrics) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for resource in otlp.collect().resource_metrics:
        assert resource.resource.attributes["service.name"] == "cos"
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_rpc_and_http_durations_carry_semantic_convention_attributes() -> None:
    otlp = otlp_metrics(NodeMetrics().registry)
    otlp.rpc_server("chief_of_state.v1.ChiefOfStateService", "ProcessCommand", "OK", 0.002)
    otlp.rpc_server("chief_of_state.v1.ChiefOfStateService", "ProcessCommand", "OK", 0.020)
    otlp.rpc_server("chief_of_state.v1.ChiefOfStateService", "ProcessCommand", "NOT_FOUND", 0.001)
    otlp.write_handler_call("grpc", "HandleCommand", "OK", 0.003, "handler", 50051)
    otlp.write_handler_call("http", "HandleEvent", "UNAVAILABLE", 0.5, "handler", 8080)
    otlp.http_server("GET", "/v1/entities/{entityId}/state", 200, 0.004)
    found = points(otlp)
    served = {p.attributes["rpc.grpc.status_code"]: p for p in found["rpc.server.duration"]}
    assert set(served) == {0, 5}
    ok = served[0]
    assert ok.count == 2 and ok.sum == pytest.approx(22.0)  # milliseconds
    assert (ok.min, ok.max) == (pytest.approx(2.0), pytest.approx(20.0))
    assert list(ok.explicit_bounds)[:4] == [0.0, 5.0, 10.0, 25.0]
    assert list(ok.bucket_counts)[:4] == [0, 1, 0, 1]  # 2 ms in (0, 5], 20 ms in (10, 25]
    assert dict(ok.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "chief_of_state.v1.ChiefOfStateService",
        "rpc.method": "ProcessCommand",
        "rpc.grpc.status_code": 0,
    }
    (client,) = found["rpc.client.duration"]
    assert client.attributes["rpc.method"] == "HandleCommand" and client.attributes["server.port"] == 50051
    (http_client,) = found["http.client.request.duration"]
    assert http_client.attributes["error.type"] == "UNAVAILABLE" and http_client.sum == pytest.approx(0.5)
    (http_server,) = found["http.server.request.duration"]
    assert http_server.attributes["http.route"] == "/v1/entities/{entityId}/state"
    assert http_server.attributes["http.response.status_code"] == 200


def test_values_are_cumulative_from_the_start() -> None:
    otlp = otlp_metrics(NodeMetrics().registry)
    otlp.rpc_server("s", "m", "OK", 0.001)
    first = points(otlp)["rpc.server.duration"][0]
    otlp.rpc_server("s", "m", "OK", 0.001)
    second = points(otlp)["rpc.server.duration"][0]
    assert (first.count, second.count) == (1, 2)
    assert first.start_time_unix_nano == second.start_time_unix_nano < second.time_unix_nano


def test_the_nodes_own_metrics_and_process_metrics_are_read_at_export() -> None:
    metrics = NodeMetrics()
    otlp = otlp_metrics(metrics.registry)
    metrics.observe_request("ProcessCommand", "OK", "type.googleapis.com/bank.v1.Deposit", 0.01)
    metrics.observe_request("ProcessCommand", "OK", "type.googleapis.com/bank.v1.Deposit", 0.02)
    found = points(otlp)
    (requests,) = found["cos_requests"]
    assert requests.value == 2 and requests.attributes["code"] == "OK"
    counts = [
        p for p in found["cos_request_duration_seconds_count"] if p.attributes["rpc"] == "ProcessCommand"
    ]
    assert [p.value for p in counts] == [2]
    assert {p.attributes["cpu.mode"] for p in found["process.cpu.time"]} == {"user", "system"}
    assert found["process.memory.usage"][0].value > 1_000_000
    assert found["process.thread.count"][0].value >= 1


async def test_close_pushes_what_was_recorded_once_more() -> None:
    out = io.StringIO()
    otlp = OtlpMetrics("cos", NodeMetrics().registry, ConsoleMetricExporter(out=out), interval_s=3600)
    otlp.start()
    otlp.rpc_server("chief_of_state.v1.ChiefOfStateService", "GetState", "OK", 0.001)
    await otlp.close()
    assert "rpc.server.duration" in out.getvalue() and "GetState" in out.getvalue()


def test_metrics_are_pushed_only_when_the_exporter_variable_names_otlp() -> None:
    assert not tracing_settings({}, "cos").otlp_metrics
    assert not tracing_settings({"OTEL_METRICS_EXPORTER": "prometheus"}, "cos").otlp_metrics
    settings = tracing_settings({"OTEL_METRICS_EXPORTER": "prometheus, OTLP"}, "cos")
    assert settings.otlp_metrics and settings.otlp_metrics_protocol == "grpc"
    off = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert not tracing_settings(off, "cos").otlp_metrics


def test_the_protocol_variables_choose_the_exporter_and_bad_ones_name_the_variable() -> None:
    environ = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert tracing_settings(environ, "cos").otlp_metrics_protocol == "http/protobuf"
    environ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"] = "grpc"
    assert tracing_settings(environ, "cos").otlp_metrics_protocol == "grpc"
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert tracing_settings(traced, "cos").traces_protocol == "http/protobuf"
    with pytest.raises(ConfigError) as caught:
        tracing_settings(
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp"}, "cos"
        )
    assert caught.value.variable == "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"


def test_the_export_interval_is_read_in_milliseconds() -> None:
    environ = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "1500"}
    assert tracing_settings(environ, "cos").otlp_metrics_interval_s == 1.5
    with pytest.raises(ConfigError) as caught:
        tracing_settings({**environ, "OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "cos")
    assert caught.value.variable == "OTEL_METRIC_EXPORT_INTERVAL"
