"""The gRPC port's connection limits against a real `cos serve` (docs/operations.md, "gRPC connection
limits"): connections that never finish their handshake or sit idle are closed within their bounds, a
connection cannot run more streams than allowed at once, calls beyond the server's bound get
RESOURCE_EXHAUSTED, and the node serves other clients throughout and afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)

# What a busy two-core machine may add to a bound before the close is seen here.
SLACK_S = 20.0
DEADLINE_S = 60.0
# The client's half of an HTTP/2 connection's start: the preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def own_connection(port: int) -> aio.Channel:
    """A channel with a TCP connection of its own: grpc shares one among channels to the same target."""
    return aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


async def seconds_until_closed(port: int, first_bytes: bytes) -> float:
    """Opens a TCP connection, sends `first_bytes` (nothing more) and reads until the node closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    try:
        writer.write(first_bytes)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S + SLACK_S):
            while True:
                try:
                    if not await reader.read(65536):
                        break
                except ConnectionError:
                    break
        return time.monotonic() - began
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def open_account(port: int, entity: str) -> pb.ProcessCommandResponse:
    async with own_connection(port) as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.ProcessCommandRequest(entity_id=entity, command=bank.open_account("Ann", 5))
        reply: pb.ProcessCommandResponse = await stub.ProcessCommand(request, timeout=20)
        return reply


def subscriptions_started(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total") and 'grpc_method="SubscribeAll"' in line
    )


@sqlite_only
async def test_silent_and_idle_connections_are_closed_within_their_bounds(node_factory: NodeFactory) -> None:
    node = node_factory(
        COS_SUBSCRIPTION_ENABLED="true",
        COS_GRPC_SERVER_HANDSHAKE_TIMEOUT="1s",
        COS_GRPC_SERVER_MAX_CONNECTION_IDLE="2s",
    )
    port = node.ports["grpc"]
    # Silent: never sends the HTTP/2 preface. Idle: a finished HTTP/2 start and no call. Many at once.
    silent = [seconds_until_closed(port, b"") for _ in range(20)]
    idle = [seconds_until_closed(port, HTTP2_PREFACE) for _ in range(20)]
    closed = await asyncio.gather(*silent, *idle)
    silent_s, idle_s = closed[:20], closed[20:]
    assert max(silent_s) < 1 + SLACK_S, silent_s
    assert min(idle_s) >= 1.5 and max(idle_s) < 2 + SLACK_S, idle_s  # idle, not dropped as silent

    # A connection with a call in progress is not idle: a subscription outlives the bound by far.
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.SubscribeAll(pb.SubscribeAllRequest(subscription_id="watcher"))
        await asyncio.wait_for(call.initial_metadata(), DEADLINE_S)  # sent once it is registered
        await asyncio.sleep(6)
        await open_account(port, "acc-late")
        event = await asyncio.wait_for(call.read(), DEADLINE_S)
        assert isinstance(event, pb.SubscribeAllResponse) and event.meta.entity_id == "acc-late"
        call.cancel()
    assert node.alive()


@sqlite_only
async def test_streams_per_connection_and_calls_per_server_are_bounded(node_factory: NodeFactory) -> None:
    node: Process = node_factory(
        COS_SUBSCRIPTION_ENABLED="true",
        COS_GRPC_SERVER_MAX_CONCURRENT_STREAMS="2",
        COS_GRPC_SERVER_MAX_CONCURRENT_RPCS="3",
    )
    port, metrics_port = node.ports["grpc"], node.ports["metrics"]
    await open_account(port, "acc-0")
    greedy, other = own_connection(port), own_connection(port)
    calls: list[aio.UnaryStreamCall[pb.SubscribeAllRequest, pb.SubscribeAllResponse]] = []
    try:
        stub = ChiefOfStateServiceStub(greedy)  # type: ignore[no-untyped-call]
        await stub.GetState(pb.GetStateRequest(entity_id="acc-0"), timeout=20)  # connected, settings known
        calls += [stub.SubscribeAll(pb.SubscribeAllRequest(subscription_id=f"greedy-{i}")) for i in range(5)]
        # One connection asking for 5 streams runs 2: the other 3 wait in the client for a free stream.
        deadline = time.monotonic() + DEADLINE_S
        while subscriptions_started(metrics_port) < 2:
            assert time.monotonic() < deadline, "the first two subscriptions never started"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        assert subscriptions_started(metrics_port) == 2
        assert not any(call.done() for call in calls)
        # So that connection alone cannot reach the server's bound of 3 calls: another client is served.
        assert (await open_account(port, "acc-1")).meta.revision_number == 1

        # Two more subscriptions on another connection make 4 calls: one is refused at once.
        other_stub = ChiefOfStateServiceStub(other)  # type: ignore[no-untyped-call]
        more = [other_stub.SubscribeAll(pb.SubscribeAllRequest(subscription_id=f"more-{i}")) for i in (1, 2)]
        calls += more
        codes = [asyncio.ensure_future(call.code()) for call in more]
        done, _ = await asyncio.wait(codes, timeout=DEADLINE_S, return_when=asyncio.FIRST_COMPLETED)
        assert [task.result() for task in done] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        for task in codes:
            task.cancel()
    finally:
        for call in calls:
            call.cancel()
        await greedy.close()
        await other.close()
    # Once the subscribers are gone the node serves calls again.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            assert (await open_account(port, "acc-2")).meta.revision_number == 1
            break
        except aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert time.monotonic() < deadline, "calls were still refused after the subscribers left"
            await asyncio.sleep(0.2)
    assert node.alive()
