"""The command path's request scope: failures leave as CosErrors, are logged once, counted by status,
and mark the request's server span (docs/contract.md §3, §12)."""

from __future__ import annotations

import logging

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from chiefofstate.api.command_path import CommandPath
from chiefofstate.config.tracing import TracingSettings
from chiefofstate.core.errors import Code, CosError, HandlerFailed
from chiefofstate.entities.entity import EntityState
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import Tracing

COMMAND = AnyProto(type_url="type.googleapis.com/test.Command")


class Host:
    """Answers with a fixed state, or raises the failure it is given."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure

    async def process_command(self, *args: object) -> EntityState:
        if self.failure is not None:
            raise self.failure
        return EntityState(b"", 3)

    def resting_state(self, entity_id: str) -> EntityState | None:
        return None  # nothing cached at rest: every read goes through get_state

    async def get_state(self, *args: object) -> EntityState:
        return await self.process_command()


def recorded_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    tracing = Tracing(TracingSettings(enabled=False, service_name="test"))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enabled = True
    tracing.tracer = provider.get_tracer("test")
    return tracing, exporter


def requests_counted(metrics: NodeMetrics, code: str) -> float:
    labels = {"rpc": "ProcessCommand", "code": code, "command_type": COMMAND.type_url}
    return metrics.registry.get_sample_value("cos_requests_total", labels) or 0.0


async def test_a_success_is_counted_ok_and_its_span_has_the_revision() -> None:
    tracing, exporter = recorded_tracing()
    metrics = NodeMetrics()
    path = CommandPath(Host(), 5.0, tracing=tracing, metrics=metrics)
    state = await path.process_command("e", COMMAND, (), None)
    assert state.revision == 3
    assert requests_counted(metrics, "OK") == 1
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["cos.revision"] == 3
    assert span.status.status_code is not StatusCode.ERROR


async def test_a_cos_error_passes_through_counted_by_its_status_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing, exporter = recorded_tracing()
    metrics = NodeMetrics()
    refused = HandlerFailed("overdrawn", code=Code.FAILED_PRECONDITION)  # the handler's own status
    path = CommandPath(Host(refused), 5.0, tracing=tracing, metrics=metrics)
    with caplog.at_level(logging.WARNING), pytest.raises(HandlerFailed) as raised:
        await path.process_command("e", COMMAND, (), None)
    assert raised.value is refused
    assert requests_counted(metrics, "FAILED_PRECONDITION") == 1
    (record,) = caplog.records
    assert not record.exc_info  # an expected failure: logged once, without a traceback
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["cos.status"] == "FAILED_PRECONDITION"


async def test_an_unexpected_exception_becomes_internal_with_its_cause_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing, exporter = recorded_tracing()
    metrics = NodeMetrics()
    bug = KeyError("a bug")
    path = CommandPath(Host(bug), 5.0, tracing=tracing, metrics=metrics)
    with caplog.at_level(logging.WARNING), pytest.raises(CosError) as raised:
        await path.process_command("e", COMMAND, (), None)
    assert raised.value.code.name == "INTERNAL" and raised.value.__cause__ is bug
    assert requests_counted(metrics, "INTERNAL") == 1 and requests_counted(metrics, "OK") == 0
    (record,) = caplog.records
    assert record.exc_info is not None  # logged with the bug's traceback, once
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["cos.status"] == "INTERNAL"


async def test_an_empty_entity_id_is_invalid_and_tracing_off_records_the_same_metrics() -> None:
    metrics = NodeMetrics()
    path = CommandPath(Host(), 5.0, metrics=metrics)
    with pytest.raises(CosError) as raised:
        await path.process_command("", COMMAND, (), None)
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert requests_counted(metrics, "INVALID_ARGUMENT") == 1
    assert (await path.get_state("e", None)).revision == 3
    assert (
        metrics.registry.get_sample_value(
            "cos_requests_total", {"rpc": "GetState", "code": "OK", "command_type": ""}
        )
        == 1
    )


class RestingHost(Host):
    """One entity cached at rest; every other read goes through get_state, which counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.queued_reads = 0

    def resting_state(self, entity_id: str) -> EntityState | None:
        return EntityState(b"cached", 7) if entity_id == "resting" else None

    async def get_state(self, *args: object) -> EntityState:
        self.queued_reads += 1
        return await super().get_state(*args)


async def test_with_tracing_on_every_read_goes_through_the_entity_and_has_its_span() -> None:
    tracing, exporter = recorded_tracing()
    host = RestingHost()
    path = CommandPath(host, 5.0, tracing=tracing)
    assert (await path.get_state("resting", None)).revision == 3  # the host's get_state answered
    assert host.queued_reads == 1
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["cos.revision"] == 3


async def test_cached_state_answers_a_resting_entity_at_once_and_counts_it_as_a_get_state() -> None:
    host, metrics = RestingHost(), NodeMetrics()
    path = CommandPath(host, 5.0, metrics=metrics)
    cached = path.cached_state("resting")
    assert cached is not None and cached.reply == b"cached"
    assert path.cached_state("other") is None  # not at rest: the caller goes through get_state
    assert path.cached_state("") is None  # nothing invalid is ever cached; get_state will refuse it
    labels = {"rpc": "GetState", "code": "OK", "command_type": ""}
    assert metrics.registry.get_sample_value("cos_requests_total", labels) == 1
    assert host.queued_reads == 0


async def test_cached_state_leaves_every_read_to_get_state_when_tracing() -> None:
    tracing, _ = recorded_tracing()
    path = CommandPath(RestingHost(), 5.0, tracing=tracing)
    assert path.cached_state("resting") is None
