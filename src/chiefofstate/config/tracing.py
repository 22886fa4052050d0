"""Whether the node traces and pushes metrics over OTLP, from the standard OpenTelemetry variables
(docs/contract.md §10.7, §12; docs/operations.md "Metrics over OTLP")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chiefofstate.core.errors import ConfigError

OTLP_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    enabled: bool
    service_name: str
    # metrics pushed over OTLP (OTEL_METRICS_EXPORTER includes `otlp`), and the exporter's protocol
    otlp_metrics: bool = False
    otlp_metrics_protocol: str = "grpc"
    otlp_metrics_interval_s: float = 60.0
    otlp_metrics_timeout_s: float = 30.0
    traces_protocol: str = "grpc"


def tracing_settings(environ: Mapping[str, str], default_service_name: str) -> TracingSettings:
    def off(name: str, value: str) -> bool:
        return environ.get(name, "").strip().lower() == value

    telemetry_off = off("OTEL_SDK_DISABLED", "true") or off("OTEL_JAVAAGENT_ENABLED", "false")
    has_endpoint = bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )
    exporters = {name.strip().lower() for name in environ.get("OTEL_METRICS_EXPORTER", "").split(",")}
    otlp_metrics = "otlp" in exporters and not telemetry_off
    enabled = has_endpoint and not telemetry_off
    return TracingSettings(
        enabled=enabled,
        service_name=environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name,
        otlp_metrics=otlp_metrics,
        otlp_metrics_protocol=_protocol(environ, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        if otlp_metrics
        else "grpc",
        otlp_metrics_interval_s=_milliseconds(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60_000) / 1000,
        otlp_metrics_timeout_s=_milliseconds(environ, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000) / 1000,
        traces_protocol=_protocol(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") if enabled else "grpc",
    )


def _milliseconds(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 100 <= int(raw) <= 3_600_000:
        raise ConfigError(name, f"must be milliseconds between 100 and 3600000 (got {raw!r})")
    return int(raw)


def _protocol(environ: Mapping[str, str], signal_variable: str) -> str:
    """The exporter protocol of one signal, as the OpenTelemetry variables choose it: the signal's own
    variable, else the general one, else gRPC."""
    for name in (signal_variable, "OTEL_EXPORTER_OTLP_PROTOCOL"):
        chosen = environ.get(name, "").strip().lower()
        if chosen:
            if chosen not in OTLP_PROTOCOLS:
                raise ConfigError(name, f"must be one of {', '.join(OTLP_PROTOCOLS)} (got {chosen!r})")
            return chosen
    return "grpc"
