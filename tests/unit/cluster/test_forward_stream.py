"""Forwarded requests on a stream between two members: a real gRPC server in this process serves the
owner's ForwardingService over a stand-in command path; the sender is the entry member's streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import status_pb2
from grpc import aio

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.forwarding_service import ForwardingService, add_forwarding_service
from chiefofstate.api.token_file import TokenFile
from chiefofstate.cluster.forward_stream import ForwardStreams
from chiefofstate.cluster.peers import GET_STATE, PROCESS_COMMAND, NotHere, PeerClients, Unreachable
from chiefofstate.core.auth import parse_tokens
from chiefofstate.core.errors import Code, CosError, ShardNotHere
from chiefofstate.core.headers import Metadata
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import (
    ChiefOfStateServiceServicer,
    add_ChiefOfStateServiceServicer_to_server,
)
from chiefofstate.telemetry.tracing import TRACING_OFF
from tests.support.readside import eventually

DETAILS = status_pb2.Status(code=9, message="rich").SerializeToString()


def reply_of(entity_id: str, revision: int) -> bytes:
    return pb.ProcessCommandResponse(
        meta=MetaData(entity_id=entity_id, revision_number=revision)
    ).SerializeToString()


@dataclass
class Commands:
    """The owner's command path: `slow-*` entities wait for `release`, `elsewhere` is not served here,
    `refused` is refused with rich details."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[tuple[str, Metadata, float]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, caller_left_s: float | None
    ) -> EntityState:
        self.seen.append((entity_id, metadata, caller_left_s or 0.0))
        if entity_id == "elsewhere":
            raise ShardNotHere(3)
        if entity_id == "refused":
            raise CosError("not allowed", code=Code.FAILED_PRECONDITION, details=DETAILS)
        if entity_id.startswith("slow"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(entity_id)
                raise
        return EntityState(reply_of(entity_id, 7), 7)

    def cached_state(self, entity_id: str) -> EntityState | None:
        return None

    async def get_state(self, entity_id: str, caller_left_s: float | None, metadata: Metadata) -> EntityState:
        return EntityState(reply_of(entity_id, 3), 3)


@dataclass
class UnaryOwner(ChiefOfStateServiceServicer):
    """The same member's unary methods: counts the forwarded requests sent as calls of their own."""

    calls: list[str] = field(default_factory=list)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Any
    ) -> pb.ProcessCommandResponse:  # type: ignore[override]
        self.calls.append(request.entity_id)
        return pb.ProcessCommandResponse(meta=MetaData(entity_id=request.entity_id, revision_number=1))


@dataclass
class Owner:
    commands: Commands
    unary: UnaryOwner
    service: ForwardingService
    server: aio.Server
    address: str


async def start_owner(max_in_flight: int = 64, tokens: TokenFile | None = None, port: int = 0) -> Owner:
    commands = Commands()
    service = ForwardingService(
        cast(CommandPath, commands),
        max_in_flight=max_in_flight,
        max_message_bytes=4 * 1024 * 1024,
        tracing=TRACING_OFF,
        tokens=tokens,
    )
    unary = UnaryOwner()
    server = aio.server()
    add_forwarding_service(service, server)
    add_ChiefOfStateServiceServicer_to_server(unary, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return Owner(commands, unary, service, server, f"127.0.0.1:{bound}")


@pytest.fixture
async def owner() -> AsyncIterator[Owner]:
    started = await start_owner()
    yield started
    started.commands.release.set()
    await started.server.stop(None)


@pytest.fixture
async def peers() -> AsyncIterator[PeerClients]:
    clients = PeerClients()
    yield clients
    await clients.close()


def command_request(entity_id: str) -> bytes:
    return pb.ProcessCommandRequest(entity_id=entity_id).SerializeToString()


async def send(streams: ForwardStreams, owner: Owner, entity_id: str, timeout_s: float = 10.0) -> bytes:
    metadata = [("x-custom", "a"), ("x-trace-bin", b"\x00\x01"), ("x-cos-forwarded", "1")]
    return await streams.call(owner.address, PROCESS_COMMAND, command_request(entity_id), metadata, timeout_s)


async def test_concurrent_requests_share_one_stream_with_their_headers_and_deadlines(
    owner: Owner, peers: PeerClients
) -> None:
    streams = ForwardStreams(peers, 64, 4 * 1024 * 1024)
    try:
        replies = await asyncio.gather(*(send(streams, owner, f"e-{n}") for n in range(50)))
        state = await streams.call(
            owner.address, GET_STATE, pb.GetStateRequest(entity_id="g").SerializeToString(), [], 5.0
        )
    finally:
        await streams.close()
    assert replies == [reply_of(f"e-{n}", 7) for n in range(50)]
    assert pb.GetStateResponse.FromString(state).meta.revision_number == 3
    assert owner.unary.calls == []  # nothing went as a call of its own
    entity_id, metadata, left = owner.commands.seen[0]
    assert dict(metadata) == {"x-custom": "a", "x-trace-bin": b"\x00\x01", "x-cos-forwarded": "1"}
    assert 5.0 < left <= 10.0


async def test_the_owners_answers_arrive_as_a_direct_call_would_end(owner: Owner, peers: PeerClients) -> None:
    streams = ForwardStreams(peers, 64, 4 * 1024 * 1024)
    try:
        with pytest.raises(CosError) as refused:
            await send(streams, owner, "refused")
        with pytest.raises(NotHere):
            await send(streams, owner, "elsewhere")
        with pytest.raises(CosError) as undecodable:
            await streams.call(owner.address, PROCESS_COMMAND, b"\xff\xff", [], 5.0)
    finally:
        await streams.close()
    assert (refused.value.code, refused.value.message, refused.value.details) == (
        Code.FAILED_PRECONDITION,
        "not allowed",
        DETAILS,
    )
    assert undecodable.value.code is Code.INVALID_ARGUMENT
    assert "not a valid protobuf message" in undecodable.value.message


async def test_a_slow_entity_does_not_hold_up_another(owner: Owner, peers: PeerClients) -> None:
    streams = ForwardStreams(peers, 64, 4 * 1024 * 1024)
    try:
        slow = asyncio.create_task(send(streams, owner, "slow-1"))
        assert await send(streams, owner, "quick") == reply_of("quick", 7)
        assert not slow.done()
        owner.commands.release.set()
        assert await slow == reply_of("slow-1", 7)
    finally:
        await streams.close()


async def test_beyond_the_in_flight_limit_requests_go_as_calls_of_their_own(
    owner: Owner, peers: PeerClients
) -> None:
    streams = ForwardStreams(peers, 2, 4 * 1024 * 1024)
    try:
        waiting = [asyncio.create_task(send(streams, owner, f"slow-{n}")) for n in range(2)]
        await eventually(lambda: len(owner.commands.seen) == 2, timeout_s=10.0)
        assert streams.in_flight(owner.address) == 2
        assert (
            await send(streams, owner, "third")
            == pb.ProcessCommandResponse(
                meta=MetaData(entity_id="third", revision_number=1)
            ).SerializeToString()
        )
        owner.commands.release.set()
        await asyncio.gather(*waiting)
    finally:
        await streams.close()
    assert owner.unary.calls == ["third"]


async def test_requests_the_owner_has_no_room_for_go_as_calls_of_their_own(peers: PeerClients) -> None:
    owner = await start_owner(max_in_flight=1)
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        slow = asyncio.create_task(send(streams, owner, "slow-1"))
        await eventually(lambda: len(owner.commands.seen) == 1, timeout_s=10.0)
        await send(streams, owner, "second")
        assert owner.unary.calls == ["second"]
        owner.commands.release.set()
        await slow
    finally:
        await streams.close()
        await owner.server.stop(None)


async def test_a_caller_giving_up_stops_the_owner_too(owner: Owner, peers: PeerClients) -> None:
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        cancelled = asyncio.create_task(send(streams, owner, "slow-cancelled"))
        await eventually(lambda: len(owner.commands.seen) == 1, timeout_s=10.0)
        cancelled.cancel()
        with pytest.raises(CosError) as late:
            await send(streams, owner, "slow-late", timeout_s=0.3)
        await eventually(
            lambda: sorted(owner.commands.cancelled) == ["slow-cancelled", "slow-late"], timeout_s=10.0
        )
    finally:
        await streams.close()
    assert late.value.code is Code.DEADLINE_EXCEEDED
    assert streams.in_flight(owner.address) == 0


async def test_a_stream_cut_off_fails_only_what_it_carried_as_possibly_run(peers: PeerClients) -> None:
    owner = await start_owner()
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        carried = asyncio.create_task(send(streams, owner, "slow-1"))
        await eventually(lambda: len(owner.commands.seen) == 1, timeout_s=10.0)
        await owner.server.stop(None)  # the owner dies with the command running
        with pytest.raises(Unreachable) as cut:
            await carried
        assert not cut.value.never_sent
        assert cut.value.error.code is Code.UNAVAILABLE
        # Nobody listens at the address any more: provably never sent, as a unary call's refusal.
        with pytest.raises(Unreachable) as refused:
            await send(streams, owner, "after")
        assert refused.value.never_sent
    finally:
        await streams.close()


async def test_a_leaving_owner_answers_what_it_took_and_nothing_else_runs(peers: PeerClients) -> None:
    owner = await start_owner()
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        taken = asyncio.create_task(send(streams, owner, "slow-1"))
        await eventually(lambda: len(owner.commands.seen) == 1, timeout_s=10.0)
        leaving = asyncio.create_task(owner.service.leave(10.0))
        await asyncio.sleep(0.1)
        owner.commands.release.set()
        assert await taken == reply_of("slow-1", 7)
        await leaving
        with pytest.raises(Unreachable) as after:
            await send(streams, owner, "after-leaving")
        assert after.value.never_sent
        assert [entity for entity, _, _ in owner.commands.seen] == ["slow-1"]
    finally:
        await streams.close()
        await owner.server.stop(None)


async def test_every_request_on_the_stream_needs_its_callers_token(
    tmp_path: Path, peers: PeerClients
) -> None:
    path = tmp_path / "tokens"
    path.write_text("good client\n")
    owner = await start_owner(tokens=TokenFile(path, parse_tokens(path.read_text()), interval_s=1.0))
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        with pytest.raises(CosError) as refused:
            await send(streams, owner, "no-token")
        allowed = await streams.call(
            owner.address, PROCESS_COMMAND, command_request("ok"), [("authorization", "Bearer good")], 5.0
        )
    finally:
        await streams.close()
        await owner.server.stop(None)
    assert refused.value.code is Code.UNAUTHENTICATED
    assert allowed == reply_of("ok", 7)
    assert [entity for entity, _, _ in owner.commands.seen] == ["ok"]


async def test_a_member_without_the_stream_gets_calls_of_their_own(peers: PeerClients) -> None:
    unary = UnaryOwner()
    server = aio.server()
    add_ChiefOfStateServiceServicer_to_server(unary, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    streams = ForwardStreams(peers, 8, 4 * 1024 * 1024)
    try:
        for entity_id in ("first", "second"):
            await streams.call(address, PROCESS_COMMAND, command_request(entity_id), [], 5.0)
    finally:
        await streams.close()
        await server.stop(None)
    assert unary.calls == ["first", "second"]
