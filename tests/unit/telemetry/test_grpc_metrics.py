"""The gRPC server metrics: status codes as the client sees them, series bound once, every handler
registered through measured_server measured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.telemetry.grpc_metrics import GrpcServerMetrics, failure_code, measured_server, split_method
from chiefofstate.telemetry.metrics import NodeMetrics

COS = "chief_of_state.v1.ChiefOfStateService"
PROCESS_COMMAND = f"/{COS}/ProcessCommand"


class FakeContext:
    """The parts of grpc.aio's ServicerContext the measured handlers read."""

    def __init__(self, code: grpc.StatusCode | None = None, remaining: float | None = None) -> None:
        self._code = code
        self._remaining = remaining
        self.written: list[object] = []

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float | None:
        return self._remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def write(self, message: object) -> None:
        self.written.append(message)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


@pytest.mark.parametrize(
    ("error", "context", "expected"),
    [
        (aio.AbortError(), FakeContext(grpc.StatusCode.INVALID_ARGUMENT), grpc.StatusCode.INVALID_ARGUMENT),
        (RuntimeError("boom"), FakeContext(), grpc.StatusCode.UNKNOWN),
        (NotImplementedError(), FakeContext(grpc.StatusCode.UNIMPLEMENTED), grpc.StatusCode.UNIMPLEMENTED),
        (asyncio.CancelledError(), FakeContext(), grpc.StatusCode.CANCELLED),
        (asyncio.CancelledError(), FakeContext(remaining=3.0), grpc.StatusCode.CANCELLED),
        (asyncio.CancelledError(), FakeContext(remaining=0.0), grpc.StatusCode.DEADLINE_EXCEEDED),
        (asyncio.CancelledError(), FakeContext(remaining=-0.5), grpc.StatusCode.DEADLINE_EXCEEDED),
        (GeneratorExit(), FakeContext(), grpc.StatusCode.CANCELLED),
    ],
)
def test_failure_codes_are_what_the_client_receives(
    error: BaseException, context: FakeContext, expected: grpc.StatusCode
) -> None:
    assert failure_code(error, context) is expected  # type: ignore[arg-type]


def test_methods_split_into_service_and_name() -> None:
    assert split_method(PROCESS_COMMAND) == (COS, "ProcessCommand")


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def labels(method: str, grpc_type: str = "unary", **extra: str) -> tuple[tuple[str, str], ...]:
    service, name = split_method(method)
    chosen = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": name, **extra}
    return tuple(sorted(chosen.items()))


async def measured_handler(
    server_metrics: GrpcServerMetrics, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None
) -> Any:
    """The handler as a server registered through measured_server runs it (None: not ours)."""
    service, name = split_method(method)
    generic = grpc.method_handlers_generic_handler(service, {name: handler} if handler is not None else {})
    registered: dict[str, Any] = {}

    class Recorder:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            registered["generic"] = handlers[0]

        def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
            registered.update(handlers)

    measuring = measured_server(Recorder(), server_metrics)  # type: ignore[arg-type]
    measuring.add_generic_rpc_handlers([generic])
    measured = registered["generic"].service(Details(method))
    assert registered["generic"].service(Details(method)) is measured  # wrapped once per method
    if handler is not None:
        measuring.add_registered_method_handlers(service, {name: handler})
        assert registered[name] is measured  # the fast path runs the same measured handler
    return measured


async def test_unary_calls_are_counted_by_status_and_timed() -> None:
    metrics = NodeMetrics()
    server_metrics = GrpcServerMetrics(metrics)
    server_metrics.initialize([COS])

    async def process_command(request: pb.ProcessCommandRequest, context: FakeContext) -> bytes:
        if not request.entity_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entity_id is required")
        if request.entity_id == "bug":
            raise RuntimeError("a bug")
        if request.entity_id == "gone":
            context.set_code(grpc.StatusCode.NOT_FOUND)
        return b"reply"

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        process_command, pb.ProcessCommandRequest.FromString, None
    )
    measured = await measured_handler(server_metrics, PROCESS_COMMAND, handler)
    assert (measured.request_streaming, measured.response_streaming) == (False, False)
    assert measured.request_deserializer == pb.ProcessCommandRequest.FromString
    assert measured.response_serializer is None
    before = samples(metrics)
    assert before[("grpc_server_handled_total", labels(PROCESS_COMMAND, grpc_code="OK"))] == 0
    assert before[("grpc_server_started_total", labels(f"/{COS}/Subscribe", "server_stream"))] == 0

    assert await measured.unary_unary(pb.ProcessCommandRequest(entity_id="a"), FakeContext()) == b"reply"
    with pytest.raises(aio.AbortError):
        await measured.unary_unary(pb.ProcessCommandRequest(), FakeContext())
    with pytest.raises(RuntimeError):
        await measured.unary_unary(pb.ProcessCommandRequest(entity_id="bug"), FakeContext())
    await measured.unary_unary(pb.ProcessCommandRequest(entity_id="gone"), FakeContext())

    after = samples(metrics)
    assert after[("grpc_server_started_total", labels(PROCESS_COMMAND))] == 4
    for code in ("OK", "INVALID_ARGUMENT", "UNKNOWN", "NOT_FOUND"):
        assert after[("grpc_server_handled_total", labels(PROCESS_COMMAND, grpc_code=code))] == 1
    assert after[("grpc_server_handling_seconds_count", labels(PROCESS_COMMAND))] == 4


async def test_unknown_methods_are_left_to_grpc_and_not_counted() -> None:
    metrics = NodeMetrics()
    assert await measured_handler(GrpcServerMetrics(metrics), "/no.Such/Method", None) is None
    assert not [name for name, _ in samples(metrics) if name.startswith("grpc_server")]


async def test_written_and_yielded_stream_messages_are_counted() -> None:
    metrics = NodeMetrics()
    server_metrics = GrpcServerMetrics(metrics)
    watch = "/grpc.health.v1.Health/Watch"
    reflect = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    async def written(request: health_pb2.HealthCheckRequest, context: FakeContext) -> None:
        assert context.peer() == "ipv4:127.0.0.1:1"  # everything but write goes to the real context
        for status in (1, 2, 1):
            await context.write(health_pb2.HealthCheckResponse(status=status))

    async def yielded(requests: AsyncIterator[str], context: FakeContext) -> AsyncIterator[str]:
        async for request in requests:
            yield request.upper()

    async def requests() -> AsyncIterator[str]:
        for text in ("a", "b"):
            yield text

    writer = await measured_handler(
        server_metrics, watch, grpc.unary_stream_rpc_method_handler(written, None, None)
    )
    context = FakeContext()
    await writer.unary_stream(health_pb2.HealthCheckRequest(), context)
    assert len(context.written) == 3
    generator = await measured_handler(
        server_metrics, reflect, grpc.stream_stream_rpc_method_handler(yielded, None, None)
    )
    assert [reply async for reply in generator.stream_stream(requests(), FakeContext())] == ["A", "B"]

    after = samples(metrics)
    assert after[("grpc_server_msg_sent_total", labels(watch, "server_stream"))] == 3
    assert after[("grpc_server_msg_sent_total", labels(reflect, "bidi_stream"))] == 2
    assert after[("grpc_server_handled_total", labels(watch, "server_stream", grpc_code="OK"))] == 1
    assert after[("grpc_server_handled_total", labels(reflect, "bidi_stream", grpc_code="OK"))] == 1


async def test_a_stream_the_client_abandons_is_cancelled() -> None:
    metrics = NodeMetrics()
    server_metrics = GrpcServerMetrics(metrics)
    method = "/grpc.health.v1.Health/Watch"
    parked = asyncio.Event()

    async def endless(request: object, context: FakeContext) -> None:
        parked.set()
        await asyncio.Event().wait()

    measured = await measured_handler(
        server_metrics, method, grpc.unary_stream_rpc_method_handler(endless, None, None)
    )
    task = asyncio.create_task(measured.unary_stream(object(), FakeContext()))
    await parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = samples(metrics)
    assert after[("grpc_server_handled_total", labels(method, "server_stream", grpc_code="CANCELLED"))] == 1
