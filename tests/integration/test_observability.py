"""Traces over the wire to a real OTLP receiver, a real Prometheus scrape, and health that tells the truth."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from chiefofstate.cli.processes import (
    Process,
    node_environment,
    start_bank_read_handler,
    start_bank_write_handler,
    start_node,
)
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory, base_env, postgres_env
from tests.support.cluster import Cluster, node_base_env, postgres_store_env
from tests.support.cluster_status import entities_owned_by_each, settled
from tests.support.otlp import ReceivedSpan, SpanCollector, start_receiver
from tests.support.postgres import PgServer, ThrowawayServer, throwaway_server
from tests.support.readside_processes import FAST, read_side

pytestmark = pytest.mark.integration

COS_SERVICE = "chief_of_state.v1.ChiefOfStateService"
WRITE_SIDE = "chief_of_state.v1.WriteSideHandlerService"

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, SpanCollector]]:
    server, port, collector = await start_receiver()
    yield port, collector
    await server.stop(None)


def otel_env(port: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_PROPAGATORS": "tracecontext,baggage",
    }


@pytest.fixture
def traced_handler(tmp_path: Path, receiver: tuple[int, SpanCollector]) -> Iterator[Process]:
    handler = start_bank_write_handler(tmp_path / "handler", extra_env=otel_env(receiver[0]))
    yield handler
    handler.stop()


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name and span.trace_id == TRACE_ID]


def has_all(*names: str) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: all(by_name(spans, name) for name in names)


async def test_one_trace_per_command_joins_the_caller_the_node_and_the_write_handler(
    tmp_path: Path, receiver: tuple[int, SpanCollector], traced_handler: Process
) -> None:
    port, collector = receiver
    env = node_environment(
        {**base_env(traced_handler.ports["grpc"]), "COS_DB_PATH": str(tmp_path / "cos.db"), **otel_env(port)},
        COS_SERVICE_NAME="cos-under-test",
    )
    node = start_node(env, tmp_path / "logs")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            metadata = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),)
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="tr-1", command=bank.open_account("Tr", 5)),
                metadata=metadata,
                timeout=10,
            )
            with pytest.raises(aio.AioRpcError):
                await cos.ProcessCommand(
                    pb.ProcessCommandRequest(entity_id="tr-1", command=bank.withdraw(500)),
                    metadata=metadata,
                    timeout=10,
                )
        everything = has_all(
            "Entity.mailbox",
            "Entity.handleCommand",
            "Entity.recover",
            "PersistentEntity.HandleRemoteCommandsAndEvents",
            "RemoteCommandHandler.HandleCommand",
            "RemoteCommandHandler.HandleEvent",
            "Entity.handleEvent",
            "Entity.persistEventAndReply",
            "bank.HandleCommand",
            "bank.HandleEvent",
        )
        # Both commands' server spans: the failed one may reach the receiver in a later export batch.
        spans = await collector.wait_for(
            lambda received: everything(received) and len(by_name(received, "CosService.processCommand")) >= 2
        )
    finally:
        node.stop()
    api = by_name(spans, "CosService.processCommand")
    succeeded = next(span for span in api if span.attributes.get("cos.revision") == 1)
    failed = next(span for span in api if span is not succeeded)
    by_id = {span.span_id: span for span in spans}
    # the standard gRPC server span, in the caller's trace, is the parent of upstream's named span: one
    # trace from the client through every process
    server = by_id[succeeded.parent_span_id]
    assert (server.name, server.kind, server.parent_span_id) == (
        f"{COS_SERVICE}/ProcessCommand",
        2,  # SPAN_KIND_SERVER
        CALLER_SPAN_ID,
    )
    assert server.attributes == {
        "rpc.system": "grpc",
        "rpc.service": COS_SERVICE,
        "rpc.method": "ProcessCommand",
        "rpc.grpc.status_code": 0,
    }
    refused = by_id[failed.parent_span_id]
    # FAILED_PRECONDITION is the caller's problem, not the server's: the server span is not an error
    assert refused.attributes["rpc.grpc.status_code"] == 9 and refused.status_code == 0
    assert succeeded.kind == 1 and succeeded.service == "cos-under-test"  # SPAN_KIND_INTERNAL
    assert succeeded.attributes["cos.entity_id"] == "tr-1"
    assert succeeded.attributes["cos.command_type"] == "type.googleapis.com/bank.v1.OpenAccount"
    assert failed.attributes["cos.status"] == "FAILED_PRECONDITION" and failed.status_code == 2

    def parent_name(span: ReceivedSpan) -> str:
        return by_id[span.parent_span_id].name

    entity = next(s for s in by_name(spans, "Entity.handleCommand") if s.parent_span_id == succeeded.span_id)
    assert parent_name(by_name(spans, "Entity.mailbox")[0]) == "CosService.processCommand"
    remote = next(
        s
        for s in by_name(spans, "PersistentEntity.HandleRemoteCommandsAndEvents")
        if s.parent_span_id == entity.span_id
    )
    call = next(
        s for s in by_name(spans, "RemoteCommandHandler.HandleCommand") if s.parent_span_id == remote.span_id
    )
    # upstream's named span, then the standard client span of the rpc itself
    client = next(s for s in spans if s.parent_span_id == call.span_id)
    assert (call.kind, client.name, client.kind) == (1, f"{WRITE_SIDE}/HandleCommand", 3)  # 3: CLIENT
    assert client.attributes["rpc.system"] == "grpc" and client.attributes["rpc.method"] == "HandleCommand"
    assert client.attributes["server.port"] == traced_handler.ports["grpc"]
    # the write handler's own span, exported by the handler process, is a child of the node's client span
    handler_span = next(s for s in by_name(spans, "bank.HandleCommand") if s.parent_span_id == client.span_id)
    assert handler_span.service == "bank-write-handler"
    event_call = by_name(spans, "RemoteCommandHandler.HandleEvent")[0]
    assert parent_name(event_call) == "Entity.handleEvent"
    event_client = next(s for s in spans if s.parent_span_id == event_call.span_id)
    assert (event_client.name, event_client.kind) == (f"{WRITE_SIDE}/HandleEvent", 3)
    assert any(s.parent_span_id == event_client.span_id for s in by_name(spans, "bank.HandleEvent"))
    persist = by_name(spans, "Entity.persistEventAndReply")[0]
    assert parent_name(persist) == "Entity.handleCommand"
    batches = await collector.wait_for(
        lambda received: any(s.name == "Journal.appendBatch" and persist.span_id in s.links for s in received)
    )
    batch = next(s for s in batches if s.name == "Journal.appendBatch" and persist.span_id in s.links)
    assert batch.attributes["cos.batch_size"] >= 1  # type: ignore[operator]
    # log lines written inside a span carry its ids
    failure_lines = [json.loads(line) for line in node.log_text().splitlines() if "command failed" in line]
    assert failure_lines and failure_lines[0]["trace_id"] == TRACE_ID
    assert failure_lines[0]["span_id"] == failed.span_id


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def scrape(node: Process) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{node.ports['metrics']}/metrics", timeout=5)
    assert reply.status_code == 200
    return samples(reply.text)


async def test_metrics_move_with_commands_failures_and_the_cache(node_factory: NodeFactory) -> None:
    node = node_factory()
    before = await scrape(node)
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for index in range(5):
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=f"m-{index}", command=bank.open_account("M", 10)),
                timeout=10,
            )
        with pytest.raises(aio.AioRpcError):
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="m-0", command=bank.withdraw(99)), timeout=10
            )
        await cos.GetState(pb.GetStateRequest(entity_id="m-1"), timeout=10)
        with pytest.raises(aio.AioRpcError) as invalid:
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="", command=bank.open_account("M", 10)), timeout=10
            )
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(aio.AioRpcError) as missing:
            await cos.GetState(pb.GetStateRequest(entity_id="never-created"), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    after = await scrape(node)
    opened = (
        ("rpc", "ProcessCommand"),
        ("code", "OK"),
        ("command_type", "type.googleapis.com/bank.v1.OpenAccount"),
    )
    assert after[("cos_requests_total", tuple(sorted(opened)))] == 5
    refused = (
        ("rpc", "ProcessCommand"),
        ("code", "FAILED_PRECONDITION"),
        ("command_type", "type.googleapis.com/bank.v1.Withdraw"),
    )
    assert after[("cos_requests_total", tuple(sorted(refused)))] == 1
    ok_latency = ("cos_request_duration_seconds_count", (("code", "OK"), ("rpc", "ProcessCommand")))
    assert after[ok_latency] - before.get(ok_latency, 0) == 5
    assert (
        after[("cos_write_handler_call_duration_seconds_count", (("code", "OK"), ("rpc", "HandleCommand")))]
        == 5
    )
    assert (
        after[
            (
                "cos_write_handler_call_duration_seconds_count",
                (("code", "FAILED_PRECONDITION"), ("rpc", "HandleCommand")),
            )
        ]
        == 1
    )
    assert after[("cos_journal_append_batch_size_count", ())] >= 1
    assert after[("cos_journal_append_batch_size_sum", ())] == 5  # five commands appended, in some batches
    assert after[("cos_entities_cached", ())] == 5
    # the five new accounts, and the journal read that found nothing for "never-created"
    assert after[("cos_entity_recoveries_total", ())] == 6

    # gRPC server metrics (go-grpc-prometheus names), for every method the node serves
    def grpc_series(
        name: str, method: str, code: str | None = None
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = {"grpc_type": "unary", "grpc_service": COS_SERVICE, "grpc_method": method}
        if code is not None:
            labels["grpc_code"] = code
        return (name, tuple(sorted(labels.items())))

    def moved(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after[key] - before.get(key, 0)

    assert moved(grpc_series("grpc_server_started_total", "ProcessCommand")) == 7
    assert moved(grpc_series("grpc_server_handled_total", "ProcessCommand", "OK")) == 5
    assert moved(grpc_series("grpc_server_handled_total", "ProcessCommand", "FAILED_PRECONDITION")) == 1
    assert moved(grpc_series("grpc_server_handled_total", "ProcessCommand", "INVALID_ARGUMENT")) == 1
    assert moved(grpc_series("grpc_server_handling_seconds_count", "ProcessCommand")) == 7
    assert moved(grpc_series("grpc_server_handled_total", "GetState", "OK")) == 1
    assert moved(grpc_series("grpc_server_handled_total", "GetState", "NOT_FOUND")) == 1
    # methods not called yet are exposed at 0 (so rate() sees their first call), streams included
    assert before[grpc_series("grpc_server_handled_total", "Unsubscribe", "OK")] == 0
    subscribe = (("grpc_method", "Subscribe"), ("grpc_service", COS_SERVICE), ("grpc_type", "server_stream"))
    assert before[("grpc_server_msg_sent_total", subscribe)] == 0
    health_check = (
        ("grpc_method", "Check"),
        ("grpc_service", "grpc.health.v1.Health"),
        ("grpc_type", "unary"),
    )
    assert ("grpc_server_started_total", health_check) in after


@pytest.fixture
def private_postgres() -> Iterator[ThrowawayServer]:
    with throwaway_server() as server:
        yield server


async def health_status(channel: aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    return int(reply.status)


async def wait_for_health(channel: aio.Channel, wanted: int) -> None:
    deadline = time.monotonic() + 30
    while await health_status(channel) != wanted:
        assert time.monotonic() < deadline, "health never reached the expected status"
        await asyncio.sleep(0.1)


async def test_health_follows_the_database(
    tmp_path: Path, bank_handler: Process, private_postgres: ThrowawayServer
) -> None:
    env = node_environment(
        {**base_env(bank_handler.ports["grpc"]), **postgres_env(private_postgres.server, "postgres")},
        COS_DB_CONNECT_TIMEOUT="1s",
        COS_HEALTH_CHECK_INTERVAL="200ms",
    )
    node = start_node(env, tmp_path / "logs")
    ready = f"http://127.0.0.1:{node.ports['management']}/ready"
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel,
            httpx.AsyncClient() as http,
        ):
            assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            private_postgres.stop()
            await wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert (await http.get(ready, timeout=10)).status_code == 503
            private_postgres.start()
            await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
            assert (await http.get(ready, timeout=10)).status_code == 200
    finally:
        assert node.stop() == 0


async def test_read_handler_calls_join_the_commands_trace_under_the_delivery_span(
    tmp_path: Path, bank_handler: Process, receiver: tuple[int, SpanCollector]
) -> None:
    port, collector = receiver
    log_path = tmp_path / "deliveries.jsonl"
    read_handler = start_bank_read_handler(tmp_path / "logs", None, http=True, deliveries=log_path)
    env = node_environment(
        {**base_env(bank_handler.ports["grpc"]), "COS_DB_PATH": str(tmp_path / "cos.db"), **otel_env(port)},
        **FAST,
        **read_side("traced", read_handler.ports["read_side"], PROTOCOL="http"),
    )
    node = start_node(env, tmp_path / "logs")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="rs-1", command=bank.open_account("R", 1)), timeout=10
            )
        spans = await collector.wait_for(
            lambda received: any(s.name == "HttpReadSideHandler.HandleEvent" for s in received)
        )
        deadline = time.monotonic() + 20
        while not log_path.exists() or not log_path.read_text().strip():
            assert time.monotonic() < deadline, "the read handler never received the event"
            await asyncio.sleep(0.1)
    finally:
        node.stop()
        read_handler.stop()
    delivery_span = next(s for s in spans if s.name == "HttpReadSideHandler.HandleEvent")
    assert delivery_span.attributes["cos.entity_id"] == "rs-1"
    # The delivery is part of the command's trace, a child of the span that appended the event.
    command_span = next(s for s in spans if s.name == "CosService.processCommand")
    persist_span = next(s for s in spans if s.name == "Entity.persistEventAndReply")
    assert delivery_span.trace_id == command_span.trace_id == persist_span.trace_id
    assert delivery_span.parent_span_id == persist_span.span_id
    # inside it, the standard client span of the HTTP call, whose context the read handler receives
    client = next(s for s in spans if s.parent_span_id == delivery_span.span_id)
    assert (delivery_span.kind, client.name, client.kind) == (1, "POST", 3)
    assert client.attributes["http.request.method"] == "POST"
    received = json.loads(log_path.read_text().splitlines()[0])
    _, trace_id, parent_id, _ = received["traceparent"].split("-")
    assert (trace_id, parent_id) == (delivery_span.trace_id, client.span_id)


async def test_a_forwarded_command_is_one_trace_across_both_members(
    tmp_path: Path,
    receiver: tuple[int, SpanCollector],
    traced_handler: Process,
    pg_database: tuple[PgServer, str],
) -> None:
    port, collector = receiver
    server, database = pg_database
    base = node_base_env(traced_handler.ports["grpc"], os.environ, **otel_env(port))
    store_env = postgres_store_env(server.host, server.port, server.user, server.password, database)
    with Cluster(base, store_env, tmp_path / "logs") as cluster:
        entry = cluster.add_node(COS_SERVICE_NAME="cos-entry")
        owner = cluster.add_node(COS_SERVICE_NAME="cos-owner")
        owners = entities_owned_by_each(await settled(entry), (entry, owner), prefix="fw")
        forwarded = next(entity for entity, name in owners.items() if name == owner.name)
        async with aio.insecure_channel(entry.target) as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            metadata = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),)
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=forwarded, command=bank.open_account("F", 1)),
                metadata=metadata,
                timeout=20,
            )

        def forwarded_and_handled(spans: list[ReceivedSpan]) -> bool:
            owners = [s for s in by_name(spans, "CosService.processCommand") if s.service == "cos-owner"]
            return bool(owners) and bool(by_name(spans, "bank.HandleCommand"))

        spans = await collector.wait_for(forwarded_and_handled)
    by_id = {span.span_id: span for span in spans if span.trace_id == TRACE_ID}
    owner_span = next(s for s in by_name(spans, "CosService.processCommand") if s.service == "cos-owner")
    # owner's span ← owner's gRPC server span ← entry's forward (client) span ← entry's span ← entry's
    # gRPC server span ← the caller
    owner_server = by_id[owner_span.parent_span_id]
    assert (owner_server.name, owner_server.service, owner_server.kind) == (
        f"{COS_SERVICE}/ProcessCommand",
        "cos-owner",
        2,
    )
    forward = by_id[owner_server.parent_span_id]
    assert (forward.name, forward.service, forward.kind) == ("Cluster.forward", "cos-entry", 3)
    assert forward.attributes["cos.rpc"] == "ProcessCommand"
    entry_span = by_id[forward.parent_span_id]
    assert (entry_span.name, entry_span.service) == ("CosService.processCommand", "cos-entry")
    entry_server = by_id[entry_span.parent_span_id]
    assert (entry_server.name, entry_server.kind) == (f"{COS_SERVICE}/ProcessCommand", 2)
    assert entry_server.parent_span_id == CALLER_SPAN_ID
    assert entry_span.attributes["cos.entity_id"] == owner_span.attributes["cos.entity_id"] == forwarded
    # the owner's work on it, down to the write handler, is in the same trace under the owner's span

    def ancestors(span: ReceivedSpan) -> list[str]:
        chain = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append(span.span_id)
        return chain

    handled = [s for s in by_name(spans, "bank.HandleCommand") if owner_span.span_id in ancestors(s)]
    assert len(handled) == 1


async def test_no_payload_or_header_value_is_logged_even_at_debug(node_factory: NodeFactory) -> None:
    node = node_factory(
        LOG_LEVEL="DEBUG",
        COS_WRITE_PERSISTED_HEADERS="x-secret",
        COS_WRITE_SIDE_PROPAGATED_HEADERS="x-secret",
    )
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="quiet-1", command=bank.open_account("OwnerMarker7731", 5)),
            metadata=(("x-secret", "HeaderMarker9142"),),
            timeout=10,
        )
        assert reply.meta.headers[0].string_value == "HeaderMarker9142"  # it was persisted
        await cos.GetState(pb.GetStateRequest(entity_id="quiet-1"), timeout=10)
    node.stop()
    log = node.log_text()
    assert '"level": "DEBUG"' in log  # debug logging was on
    assert "OwnerMarker7731" not in log and "HeaderMarker9142" not in log


async def test_http_requests_and_subscriptions_get_standard_server_spans(
    tmp_path: Path, receiver: tuple[int, SpanCollector], traced_handler: Process
) -> None:
    port, collector = receiver
    env = node_environment(
        {**base_env(traced_handler.ports["grpc"]), "COS_DB_PATH": str(tmp_path / "cos.db"), **otel_env(port)},
        COS_SERVER_PROTOCOL="both",
        COS_SUBSCRIPTION_ENABLED="true",
    )
    node = start_node(env, tmp_path / "logs")
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", timeout=20) as http:
            answer = await http.get("/v1/entities/nobody/state", headers={"traceparent": traceparent})
            assert answer.status_code == 404
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            stream = cos.Subscribe(
                pb.SubscribeRequest(entity_id="watched", subscription_id="traced-sub"),
                metadata=(("traceparent", traceparent),),
            )
            await asyncio.wait_for(stream.initial_metadata(), 20)  # registered
            stream.cancel()  # the server span ends with the stream
        spans = await collector.wait_for(
            lambda received: (
                bool(by_name(received, "CosService.getState"))
                and bool(by_name(received, "CosService.subscribe"))
                and bool(by_name(received, f"{COS_SERVICE}/Subscribe"))
            )
        )
    finally:
        node.stop()
    by_id = {span.span_id: span for span in spans}
    get_state = by_name(spans, "CosService.getState")[0]
    http_server = by_id[get_state.parent_span_id]
    assert http_server.kind == 2 and http_server.parent_span_id == CALLER_SPAN_ID
    assert http_server.name.startswith("GET /v1/entities/{entityId")
    assert http_server.attributes["http.request.method"] == "GET"
    assert http_server.attributes["http.response.status_code"] == 404
    subscribe = by_name(spans, "CosService.subscribe")[0]
    subscribe_server = by_id[subscribe.parent_span_id]
    assert (subscribe_server.name, subscribe_server.kind) == (f"{COS_SERVICE}/Subscribe", 2)
    assert subscribe_server.parent_span_id == CALLER_SPAN_ID
    assert subscribe.attributes["cos.entity_id"] == "watched"
