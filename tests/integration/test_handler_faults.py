"""Write handlers that fail, hang, vanish or answer nonsense: clear statuses, nothing persisted.

Every test runs against both variants of the bank handler (gRPC and HTTP write-side protocols)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from chiefofstate_examples.bank.write_handler import NO_STATE_AMOUNT, WRONG_STATE_TYPE_AMOUNT
from google.protobuf.any_pb2 import Any as AnyProto
from grpc import aio

from chiefofstate.cli.processes import Process, free_port, start_bank_write_handler
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory, both_write_protocols

pytestmark = [pytest.mark.integration, both_write_protocols]


@pytest.fixture(scope="module")
def faulty_handler(tmp_path_factory: pytest.TempPathFactory, write_protocol: str) -> Iterator[Process]:
    handler = start_bank_write_handler(
        tmp_path_factory.mktemp("faulty"), extra_env={"BANK_HANDLER_FAULTS": "1"}, protocol=write_protocol
    )
    yield handler
    handler.stop()


@pytest.fixture(scope="module")
def slow_handler(tmp_path_factory: pytest.TempPathFactory, write_protocol: str) -> Iterator[Process]:
    handler = start_bank_write_handler(
        tmp_path_factory.mktemp("slow"), extra_env={"BANK_HANDLER_DELAY_MS": "1500"}, protocol=write_protocol
    )
    yield handler
    handler.stop()


def stub(channel: aio.Channel) -> ChiefOfStateServiceStub:
    return ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


async def call(
    cos: ChiefOfStateServiceStub, entity: str, command: AnyProto, deadline_s: float = 10
) -> pb.ProcessCommandResponse:
    reply: pb.ProcessCommandResponse = await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id=entity, command=command), timeout=deadline_s
    )
    return reply


async def error_of(
    cos: ChiefOfStateServiceStub, entity: str, command: AnyProto, deadline_s: float = 10
) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call(cos, entity, command, deadline_s)
    return caught.value


async def revision(cos: ChiefOfStateServiceStub, entity: str) -> int:
    try:
        reply = await cos.GetState(pb.GetStateRequest(entity_id=entity), timeout=10)
    except aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return 0
    return int(reply.meta.revision_number)


async def test_states_and_events_outside_the_validation_lists_are_refused(
    node_factory: NodeFactory, faulty_handler: Process
) -> None:
    node = node_factory(
        COS_WRITE_SIDE_PORT=str(faulty_handler.ports["write_side"]),
        COS_WRITE_SIDE_PROTO_VALIDATION="true",
        COS_WRITE_SIDE_STATE_PROTOS="bank.v1.BankAccount",
        COS_WRITE_SIDE_EVENT_PROTOS="bank.v1.AccountOpened,bank.v1.MoneyDeposited",
    )
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        await call(cos, "v-1", bank.open_account("Val", 10))
        wrong_state = await error_of(cos, "v-1", bank.deposit(WRONG_STATE_TYPE_AMOUNT))
        assert wrong_state.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wrong_state.details() == "invalid state: type.googleapis.com/google.protobuf.StringValue"
        wrong_event = await error_of(cos, "v-1", bank.withdraw(1))
        assert wrong_event.details() == "invalid event: type.googleapis.com/bank.v1.MoneyWithdrawn"
        assert await revision(cos, "v-1") == 1
        assert (await call(cos, "v-1", bank.deposit(5))).meta.revision_number == 2


async def test_an_event_handler_reply_without_state_fails_the_command(
    node_factory: NodeFactory, faulty_handler: Process
) -> None:
    node = node_factory(COS_WRITE_SIDE_PORT=str(faulty_handler.ports["write_side"]))
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        await call(cos, "s-1", bank.open_account("Sam", 10))
        error = await error_of(cos, "s-1", bank.deposit(NO_STATE_AMOUNT))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "event handler replied with empty state"
        assert await revision(cos, "s-1") == 1


async def test_a_handler_that_hangs_past_the_deadline_writes_nothing(
    node_factory: NodeFactory, slow_handler: Process
) -> None:
    node = node_factory(COS_WRITE_SIDE_PORT=str(slow_handler.ports["write_side"]))
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        error = await error_of(cos, "slow-1", bank.open_account("Slo", 1), deadline_s=0.5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await revision(cos, "slow-1") == 0
        # with enough time the same command succeeds: the entity was not left in a bad state
        assert (
            await call(cos, "slow-1", bank.open_account("Slo", 1), deadline_s=10)
        ).meta.revision_number == 1


async def test_the_command_handler_timeout_bounds_the_whole_command(
    node_factory: NodeFactory, slow_handler: Process
) -> None:
    node = node_factory(
        COS_WRITE_SIDE_PORT=str(slow_handler.ports["write_side"]), COS_COMMAND_HANDLER_TIMEOUT="1"
    )
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        error = await error_of(cos, "slow-2", bank.open_account("Slo", 1), deadline_s=10)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await revision(cos, "slow-2") == 0


async def test_a_handler_that_is_not_running_gives_unavailable(node_factory: NodeFactory) -> None:
    # A handler that is down is waited for within the command's time (docs/contract.md §3.10): keep it short.
    node = node_factory(COS_WRITE_SIDE_PORT=str(free_port()), COS_COMMAND_HANDLER_TIMEOUT="2")
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        error = await error_of(cos, "gone-1", bank.open_account("Gone", 1))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert await revision(cos, "gone-1") == 0


async def test_the_breaker_opens_after_consecutive_failures_and_fails_fast(node_factory: NodeFactory) -> None:
    node = node_factory(
        COS_WRITE_SIDE_PORT=str(free_port()),
        COS_WRITE_SIDE_BREAKER_ENABLED="true",
        COS_WRITE_SIDE_BREAKER_MAX_FAILURES="2",
        COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT="1m",
        COS_COMMAND_HANDLER_TIMEOUT="2",  # each failure waits this long for the handler to come back
    )
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        for _ in range(2):
            assert (await error_of(cos, "b-1", bank.deposit(1))).code() == grpc.StatusCode.UNAVAILABLE
        open_error = await error_of(cos, "b-1", bank.deposit(1))
        assert open_error.code() == grpc.StatusCode.INTERNAL
        assert open_error.details() == "Circuit Breaker is open; calls are failing fast"


async def test_commands_sent_while_the_handler_restarts_wait_for_it_within_their_time(
    node_factory: NodeFactory, tmp_path: Path, write_protocol: str
) -> None:
    port = free_port()
    handler = start_bank_write_handler(tmp_path / "first", port=port, protocol=write_protocol)
    node = node_factory(COS_WRITE_SIDE_PORT=str(port), COS_COMMAND_HANDLER_TIMEOUT="20")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            cos = stub(channel)
            await call(cos, "restart-1", bank.open_account("Re", 1))
            handler.kill()
            # Sent while nothing listens; the handler comes back well within the command's time.
            waiting = asyncio.create_task(call(cos, "restart-1", bank.deposit(1), deadline_s=20))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            handler = start_bank_write_handler(tmp_path / "second", port=port, protocol=write_protocol)
            assert (await waiting).meta.revision_number == 2
            for amount in range(2, 5):  # and the commands right after the restart all succeed
                assert (await call(cos, "restart-1", bank.deposit(amount))).meta.revision_number == amount + 1
    finally:
        handler.stop()
