"""Whether the node traces, from the standard OpenTelemetry variables (docs/contract.md §10.7, §12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TracingSettings:
    enabled: bool
    service_name: str


def tracing_settings(environ: Mapping[str, str], default_service_name: str) -> TracingSettings:
    def off(name: str, value: str) -> bool:
        return environ.get(name, "").strip().lower() == value

    has_endpoint = bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )
    enabled = (
        has_endpoint and not off("OTEL_SDK_DISABLED", "true") and not off("OTEL_JAVAAGENT_ENABLED", "false")
    )
    return TracingSettings(enabled, environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name)
