"""Metrics pushed over OTLP (docs/operations.md, "Metrics over OTLP"): a real node with
OTEL_METRICS_EXPORTER=otlp pushes the semantic-convention RPC and HTTP instruments, process metrics and
its own `cos_*` metrics to a real OTLP receiver, over gRPC or HTTP as OTEL_EXPORTER_OTLP_PROTOCOL says;
without the variable it pushes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process, start_node_on_free_ports
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import base_env
from tests.support.otlp import MetricCollector, start_metrics_http_receiver, start_metrics_receiver

pytestmark = pytest.mark.integration

COS = "chief_of_state.v1.ChiefOfStateService"


@pytest.fixture(params=["grpc", "http/protobuf"])
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[tuple[dict[str, str], MetricCollector]]:
    if request.param == "grpc":
        server, port, collector = await start_metrics_receiver()
        env = {
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
        }
        yield env, collector
        await server.stop(None)
        return
    http_server, port, collector = await start_metrics_http_receiver()
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}/v1/metrics",
    }
    yield env, collector
    http_server.close()


def start(tmp_path: Path, handler: Process, **overrides: str) -> Process:
    env = {
        **base_env(handler.ports["write_side"]),
        "COS_DB_PATH": str(tmp_path / "cos.db"),
        "COS_SERVER_PROTOCOL": "both",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_SERVICE_NAME": "bank-cos",
    }
    return start_node_on_free_ports(env, tmp_path / "logs", **overrides)


async def drive(node: Process) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for command in (bank.open_account("Ada", 1), bank.deposit(2)):
            await cos.ProcessCommand(pb.ProcessCommandRequest(entity_id="m-1", command=command), timeout=20)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", timeout=20) as http:
        assert (await http.get("/v1/entities/m-1/state")).status_code == 200
        assert (await http.get("/v1/entities/nobody/state")).status_code == 404


async def test_the_node_pushes_semantic_convention_and_own_metrics(
    tmp_path: Path, bank_handler: Process, receiver: tuple[dict[str, str], MetricCollector]
) -> None:
    env, collector = receiver
    node = start(tmp_path, bank_handler, OTEL_METRICS_EXPORTER="otlp", **env)
    try:
        await drive(node)
        served = await collector.wait_for_metric(
            "rpc.server.duration",
            **{"rpc.system": "grpc", "rpc.service": COS, "rpc.method": "ProcessCommand"},
        )
        assert served.unit == "ms" and served.service == "bank-cos"
        assert served.attributes["rpc.grpc.status_code"] == 0 and served.count >= 2
        called = await collector.wait_for_metric(
            "rpc.client.duration",
            **{"rpc.service": "chief_of_state.v1.WriteSideHandlerService", "rpc.method": "HandleCommand"},
        )
        assert called.attributes["server.port"] == bank_handler.ports["write_side"]
        found = await collector.wait_for_metric(
            "http.server.request.duration", **{"http.request.method": "GET", "http.response.status_code": 200}
        )
        assert found.unit == "s" and "{entityId" in str(found.attributes["http.route"])
        await collector.wait_for_metric("http.server.request.duration", **{"http.response.status_code": 404})
        await collector.wait_for_metric("process.cpu.time", **{"cpu.mode": "user"})
        await collector.wait_for_metric("process.memory.usage")
        for command_type in ("bank.v1.OpenAccount", "bank.v1.Deposit"):
            requests = await collector.wait_for_metric(
                "cos_requests",
                rpc="ProcessCommand",
                code="OK",
                command_type=f"type.googleapis.com/{command_type}",
            )
            assert requests.value == 1
    finally:
        node.stop()


async def test_without_the_exporter_variable_nothing_is_pushed(tmp_path: Path, bank_handler: Process) -> None:
    server, port, collector = await start_metrics_receiver()
    try:
        node = start(
            tmp_path,
            bank_handler,
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_METRICS_INSECURE="true",
        )
        try:
            await drive(node)
            await asyncio.sleep(2.0)  # four export intervals, had it been on
        finally:
            node.stop()
        assert collector.points == []
    finally:
        await server.stop(None)
