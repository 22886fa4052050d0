"""A cluster member's command path with requests as bytes: one for a shard another member serves goes
to that member exactly as it came, after the same checks as one served here (docs/cluster.md,
"Forwarding"); the owner here is a real gRPC server in this process that records what it received."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from grpc import aio

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.cos_service import ChiefOfStateService, add_to_server
from chiefofstate.cluster.forwarding import Forwarder
from chiefofstate.cluster.peers import FORWARDED_KEY, PeerClients
from chiefofstate.cluster.routes import Route, RoutingTable
from chiefofstate.core.errors import Code, CosError, LeaseLost
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.telemetry.metrics import NodeMetrics

SHARDS = 8
SERVICE = "chief_of_state.v1.ChiefOfStateService"
COMMAND = AnyProto(type_url="type.googleapis.com/test.Deposit", value=b"\x08\x05")
OWNER_REPLY = pb.ProcessCommandResponse(meta=MetaData(entity_id="e", revision_number=9)).SerializeToString()


@dataclass
class RecordingOwner(grpc.GenericRpcHandler):
    """The owning member: records each request's bytes and headers, answers fixed reply bytes."""

    received: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = details.method

        async def answer(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            self.received.append((method, request, dict(context.invocation_metadata() or ())))
            return OWNER_REPLY

        return grpc.unary_unary_rpc_method_handler(answer)


class Host:
    """Serves the entities it is told it serves; any other is another member's."""

    def __init__(self, serves: bool, failure: Exception | None = None) -> None:
        self.serves = serves
        self.failure = failure
        self.entered: list[str] = []

    def admits(self, entity_id: str) -> bool:
        return self.serves

    async def process_command(self, entity_id: str, command: AnyProto, *args: object) -> EntityState:
        self.entered.append(entity_id)
        if self.failure is not None:
            raise self.failure
        assert command == COMMAND
        return EntityState(b"local reply", 4)

    def resting_state(self, entity_id: str) -> EntityState | None:
        return None

    async def get_state(self, entity_id: str, *args: object) -> EntityState:
        self.entered.append(entity_id)
        return EntityState(b"local state", 4)


@dataclass
class Member:
    path: CommandPath
    owner: RecordingOwner
    host: Host
    metrics: NodeMetrics


@pytest.fixture
async def owner_server() -> AsyncIterator[tuple[RecordingOwner, str]]:
    owner = RecordingOwner()
    server = aio.server()
    server.add_generic_rpc_handlers((owner,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield owner, f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def peers() -> AsyncIterator[PeerClients]:
    clients = PeerClients()
    yield clients
    await clients.close()


def member(owner: tuple[RecordingOwner, str], peers: PeerClients, host: Host) -> Member:
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route(owner[1], 1) for shard in range(SHARDS)})
    metrics = NodeMetrics()
    forwarder = Forwarder(routes, peers, SHARDS, 1.0, metrics=metrics)
    return Member(CommandPath(host, 5.0, metrics=metrics, forwarder=forwarder), owner[0], host, metrics)


def counted(metrics: NodeMetrics, code: str, command_type: str = COMMAND.type_url) -> float:
    labels = {"rpc": "ProcessCommand", "code": code, "command_type": command_type}
    return metrics.registry.get_sample_value("cos_requests_total", labels) or 0.0


async def test_a_command_for_another_members_shard_goes_there_byte_for_byte(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients
) -> None:
    entry = member(owner_server, peers, Host(serves=False))
    # Fields in an unusual order and one this version does not know: a parse and re-serialization
    # would reorder or drop them, the owner must see them as sent.
    unknown_field = b"\xf8\x06\x2a"  # field 111, varint 42
    data = (
        pb.ProcessCommandRequest(command=COMMAND).SerializeToString()
        + unknown_field
        + pb.ProcessCommandRequest(entity_id="acct-1").SerializeToString()
    )
    reply = await entry.path.process_command_bytes(data, (("x-tenant", "t1"),), 3.0)
    assert reply == OWNER_REPLY  # the owner's bytes, as they came
    ((method, received, headers),) = entry.owner.received
    assert method == f"/{SERVICE}/ProcessCommand" and received == data
    assert headers["x-tenant"] == "t1" and headers[FORWARDED_KEY] == "1"
    assert entry.host.entered == []  # no entity entered on the member that does not serve it
    assert counted(entry.metrics, "OK") == 1  # counted with the command's type, read from the bytes


async def test_a_command_served_here_is_decoded_and_run_here(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients
) -> None:
    entry = member(owner_server, peers, Host(serves=True))
    data = pb.ProcessCommandRequest(entity_id="acct-1", command=COMMAND).SerializeToString()
    assert await entry.path.process_command_bytes(data, (), 3.0) == b"local reply"
    assert entry.host.entered == ["acct-1"] and entry.owner.received == []


async def test_a_lease_lost_while_the_command_queued_sends_the_received_bytes_on(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients
) -> None:
    entry = member(owner_server, peers, Host(serves=True, failure=LeaseLost(3)))
    data = pb.ProcessCommandRequest(entity_id="acct-1", command=COMMAND).SerializeToString()
    assert await entry.path.process_command_bytes(data, (), 3.0) == OWNER_REPLY
    assert [received for _, received, _ in entry.owner.received] == [data]


@pytest.mark.parametrize(
    ("entity_id", "reason"),
    [("", "empty entity ID"), ("bad\x00id", r"U\+0000"), ("x" * 256, "at most 255")],
)
async def test_an_invalid_id_is_refused_before_anything_is_forwarded(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients, entity_id: str, reason: str
) -> None:
    entry = member(owner_server, peers, Host(serves=False))
    data = pb.ProcessCommandRequest(entity_id=entity_id, command=COMMAND).SerializeToString()
    with pytest.raises(CosError, match=reason) as refused:
        await entry.path.process_command_bytes(data, (), 3.0)
    assert refused.value.code is Code.INVALID_ARGUMENT
    read = pb.GetStateRequest(entity_id=entity_id).SerializeToString()
    with pytest.raises(CosError, match=reason):
        await entry.path.get_state_bytes(entity_id, read, 3.0, ())
    assert entry.owner.received == []
    assert counted(entry.metrics, "INVALID_ARGUMENT") == 1


async def test_bytes_that_are_not_a_request_are_refused_and_logged_once(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients, caplog: pytest.LogCaptureFixture
) -> None:
    entry = member(owner_server, peers, Host(serves=False))
    with caplog.at_level(logging.WARNING), pytest.raises(CosError) as refused:
        await entry.path.process_command_bytes(b"\xff\xff\xff\xff", (), 3.0)
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert "not a valid protobuf message" in refused.value.message
    with pytest.raises(CosError, match="not a valid protobuf message"):
        entry.path.get_state_entity_id(b"\x0a\x05ab")  # a length past the end
    invalid_utf8 = b"\x0a\x02\xc3\x28"
    with pytest.raises(CosError, match="not a valid protobuf message"):
        await entry.path.process_command_bytes(invalid_utf8, (), 3.0)
    assert entry.owner.received == []
    refusals = [record for record in caplog.records if "request refused" in record.getMessage()]
    assert len(refusals) == 3 and not any(record.exc_info for record in caplog.records)


async def test_a_read_for_another_members_shard_goes_there_byte_for_byte(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients
) -> None:
    entry = member(owner_server, peers, Host(serves=False))
    data = pb.GetStateRequest(entity_id="acct-2").SerializeToString()
    entity_id = entry.path.get_state_entity_id(data)
    assert await entry.path.get_state_bytes(entity_id, data, 3.0, (("x-tenant", "t2"),)) == OWNER_REPLY
    ((method, received, headers),) = entry.owner.received
    assert (method, received, headers["x-tenant"]) == (f"/{SERVICE}/GetState", data, "t2")
    assert entry.host.entered == []


class RecordingServer:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


async def test_a_member_that_forwards_takes_the_two_requests_as_bytes(
    owner_server: tuple[RecordingOwner, str], peers: PeerClients
) -> None:
    entry = member(owner_server, peers, Host(serves=False))
    server = RecordingServer()
    add_to_server(ChiefOfStateService(entry.path), server)  # type: ignore[arg-type]
    for name in ("ProcessCommand", "GetState"):
        assert server.handlers[name].request_deserializer is None
    assert server.handlers["Unsubscribe"].request_deserializer is not None
    alone = RecordingServer()
    add_to_server(ChiefOfStateService(CommandPath(Host(serves=True), 5.0)), alone)  # type: ignore[arg-type]
    assert alone.handlers["ProcessCommand"].request_deserializer is not None
