"""The forwarder against real gRPC servers in this process standing in for the owning members."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import StringValue
from grpc import aio

from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.cluster.forwarding import Forwarder, revision_of
from chiefofstate.cluster.peers import FORWARDED_KEY, PeerClients
from chiefofstate.cluster.routes import Route, RoutingTable
from chiefofstate.core.errors import Code, CosError, ShardNotHere, Unavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.entities.deadline import Deadline
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import (
    ChiefOfStateServiceServicer,
    add_ChiefOfStateServiceServicer_to_server,
)

SHARDS = 8


@dataclass
class Owner(ChiefOfStateServiceServicer):
    """Answers as the member owning every shard would, or refuses as one that does not."""

    serves: bool = True
    refuse_with: CosError | None = None
    seen_metadata: list[dict[str, str]] = field(default_factory=list)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: aio.ServicerContext
    ) -> pb.ProcessCommandResponse:  # type: ignore[override]
        self.seen_metadata.append({key: value for key, value in context.invocation_metadata() or ()})  # type: ignore[misc]
        if not self.serves:
            await abort_with(context, ShardNotHere(shard_of(request.entity_id, SHARDS)))
        if self.refuse_with is not None:
            await abort_with(context, self.refuse_with)
        return pb.ProcessCommandResponse(
            state=request.command, meta=MetaData(entity_id=request.entity_id, revision_number=7)
        )

    async def GetState(
        self, request: pb.GetStateRequest, context: aio.ServicerContext
    ) -> pb.GetStateResponse:  # type: ignore[override]
        return pb.GetStateResponse(meta=MetaData(entity_id=request.entity_id, revision_number=3))


@dataclass
class Running:
    owner: Owner
    address: str
    server: aio.Server


async def serve(owner: Owner) -> Running:
    server = aio.server()
    add_ChiefOfStateServiceServicer_to_server(owner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Running(owner, f"127.0.0.1:{port}", server)


@pytest.fixture
async def peers() -> AsyncIterator[PeerClients]:
    clients = PeerClients()
    yield clients
    await clients.close()


def command(text: str) -> AnyProto:
    packed = AnyProto()
    packed.Pack(StringValue(value=text))
    return packed


def request(entity_id: str, text: str) -> bytes:
    return pb.ProcessCommandRequest(entity_id=entity_id, command=command(text)).SerializeToString()


def deadline(seconds: float = 10.0) -> Deadline:
    loop = asyncio.get_running_loop()
    return Deadline(loop.time() + seconds, loop.time)


async def test_a_request_goes_to_the_owner_with_the_callers_headers(peers: PeerClients) -> None:
    owner = await serve(Owner())
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route(owner.address, 1) for shard in range(SHARDS)})
    forwarder = Forwarder(routes, peers, SHARDS, 1.0)
    reply = await forwarder.process_command("e", request("e", "hello"), [("x-tenant", "t1")], deadline())
    assert revision_of(reply) == 7
    assert pb.ProcessCommandResponse.FromString(reply).state == command("hello")
    (seen,) = owner.owner.seen_metadata
    assert seen["x-tenant"] == "t1" and seen[FORWARDED_KEY] == "1"
    read = pb.GetStateRequest(entity_id="e").SerializeToString()
    assert revision_of(await forwarder.get_state("e", read, [], deadline())) == 3
    await owner.server.stop(None)


async def test_a_stale_route_is_corrected_once_without_the_caller_seeing_it(peers: PeerClients) -> None:
    former = await serve(Owner(serves=False))
    current = await serve(Owner())
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route(former.address, 1) for shard in range(SHARDS)})
    forwarder = Forwarder(routes, peers, SHARDS, 5.0)
    answer = asyncio.create_task(forwarder.process_command("e", request("e", "x"), [], deadline()))
    for _ in range(1000):  # the former owner's refusal arrives, then the route is refreshed
        if former.owner.seen_metadata:
            break
        await asyncio.sleep(0.01)
    routes.replace({shard: Route(current.address, 2) for shard in range(SHARDS)})  # the next refresh
    assert revision_of(await answer) == 7
    assert len(current.owner.seen_metadata) == 1
    for running in (former, current):
        await running.server.stop(None)


async def test_the_owners_refusal_reaches_the_caller_unchanged(peers: PeerClients) -> None:
    owner = await serve(
        Owner(refuse_with=CosError("account closed", code=Code.FAILED_PRECONDITION, details=b"\x08\x09"))
    )
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route(owner.address, 1) for shard in range(SHARDS)})
    with pytest.raises(CosError) as refused:
        await Forwarder(routes, peers, SHARDS, 1.0).process_command("e", request("e", "x"), [], deadline())
    assert refused.value.code is Code.FAILED_PRECONDITION
    assert refused.value.message == "account closed"
    assert refused.value.details == b"\x08\x09"
    await owner.server.stop(None)


async def test_a_shard_without_an_owner_waits_briefly_then_is_unavailable(peers: PeerClients) -> None:
    routes = RoutingTable("127.0.0.1:1")
    forwarder = Forwarder(routes, peers, SHARDS, 0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Unavailable, match="no member serving it"):
        await forwarder.process_command("e", request("e", "x"), [], deadline())
    assert loop.time() - started >= 0.25


async def test_a_request_waiting_for_an_owner_goes_as_soon_as_one_is_named(peers: PeerClients) -> None:
    owner = await serve(Owner())
    routes = RoutingTable("127.0.0.1:1")
    forwarder = Forwarder(routes, peers, SHARDS, 30.0)
    answer = asyncio.create_task(forwarder.process_command("e", request("e", "x"), [], deadline()))
    await asyncio.sleep(0.05)
    assert not answer.done()
    routes.replace({shard: Route(owner.address, 1) for shard in range(SHARDS)})
    assert revision_of(await asyncio.wait_for(answer, 10)) == 7
    await owner.server.stop(None)


async def test_the_callers_deadline_bounds_the_wait(peers: PeerClients) -> None:
    forwarder = Forwarder(RoutingTable("127.0.0.1:1"), peers, SHARDS, 30.0)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(forwarder.process_command("e", request("e", "x"), [], deadline(0.2)), 10)


async def test_a_dead_owner_is_passed_over_once_the_table_names_another(peers: PeerClients) -> None:
    alive = await serve(Owner())
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route("127.0.0.1:9", 1) for shard in range(SHARDS)})  # nothing listens there
    forwarder = Forwarder(routes, peers, SHARDS, 10.0)
    # Refused before anything was sent, so even a command may go to the next owner.
    answer = asyncio.create_task(forwarder.process_command("e", request("e", "x"), [], deadline()))
    await asyncio.sleep(0.2)
    routes.replace({shard: Route(alive.address, 2) for shard in range(SHARDS)})  # the lease moved
    assert revision_of(await asyncio.wait_for(answer, 10)) == 7
    await alive.server.stop(None)


async def test_an_owners_own_unavailable_answer_is_not_sent_elsewhere(peers: PeerClients) -> None:
    refusal = Unavailable("the write handler is unavailable")
    owner = await serve(Owner(refuse_with=refusal))
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route(owner.address, 1) for shard in range(SHARDS)})
    with pytest.raises(CosError, match="write handler is unavailable") as refused:
        await Forwarder(routes, peers, SHARDS, 10.0).process_command("e", request("e", "x"), [], deadline())
    assert refused.value.code is Code.UNAVAILABLE
    assert len(owner.owner.seen_metadata) == 1
    await owner.server.stop(None)


async def test_a_member_restarted_at_the_same_address_is_tried_under_its_new_lease(
    peers: PeerClients,
) -> None:
    routes = RoutingTable("127.0.0.1:1")
    restarted = await serve(Owner())
    await restarted.server.stop(None)  # the member died: its address refuses connections
    routes.replace({shard: Route(restarted.address, 1) for shard in range(SHARDS)})
    forwarder = Forwarder(routes, peers, SHARDS, 10.0)
    answer = asyncio.create_task(forwarder.process_command("e", request("e", "x"), [], deadline()))
    await asyncio.sleep(0.2)
    port = int(restarted.address.rsplit(":", 1)[1])
    again = aio.server()
    add_ChiefOfStateServiceServicer_to_server(Owner(), again)
    again.add_insecure_port(f"127.0.0.1:{port}")
    await again.start()
    routes.replace({shard: Route(restarted.address, 2) for shard in range(SHARDS)})  # its new lease
    assert revision_of(await asyncio.wait_for(answer, 10)) == 7
    await again.stop(None)
