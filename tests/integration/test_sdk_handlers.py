"""A real `cos serve` node (SQLite) in front of an SDK write handler process, over both write-handler
protocols: commands flow end to end, refusals reach the caller as the protocol allows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc import aio
from grpc_status import rpc_status

from chiefofstate.cli.processes import Process, start_bank_write_handler, start_node_on_free_ports
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import base_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("sdk_protocol", ["grpc", "http"], indirect=True),
]


@pytest.fixture
def sdk_protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sdk_handler(tmp_path: Path, sdk_protocol: str) -> Iterator[Process]:
    # the bank example is written with chiefofstate.sdk: both programs serve its `Bank`
    handler = start_bank_write_handler(tmp_path / "logs", protocol=sdk_protocol)
    yield handler
    handler.stop()


@pytest.fixture
async def cos(
    tmp_path: Path, sdk_handler: Process, sdk_protocol: str
) -> AsyncIterator[ChiefOfStateServiceStub]:
    env = {**base_env(sdk_handler.ports["write_side"], sdk_protocol), "COS_DB_PATH": str(tmp_path / "cos.db")}
    node = start_node_on_free_ports(env, tmp_path / "logs", name="cos-node")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            yield ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        node.stop()


def packed(message: Message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


async def process(cos: ChiefOfStateServiceStub, entity: str, command: Message) -> bank_pb2.BankAccount:
    reply = await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id=entity, command=packed(command)), timeout=30
    )
    state = bank_pb2.BankAccount()
    assert reply.state.Unpack(state)
    return state


async def test_commands_flow_through_the_sdk_handler(cos: ChiefOfStateServiceStub) -> None:
    opened = await process(cos, "acc-1", bank_pb2.OpenAccount(owner="Ada", initial_balance=100))
    assert opened == bank_pb2.BankAccount(account_id="acc-1", owner="Ada", balance=100)
    await process(cos, "acc-1", bank_pb2.Deposit(amount=50))
    after = await process(cos, "acc-1", bank_pb2.Withdraw(amount=30))
    assert after.balance == 120
    read = await process(cos, "acc-1", bank_pb2.GetBalance())  # no event: the state as it is
    assert read.balance == 120
    stored = await cos.GetState(pb.GetStateRequest(entity_id="acc-1"), timeout=30)
    assert stored.meta.revision_number == 3


async def test_refusals_reach_the_caller(cos: ChiefOfStateServiceStub, sdk_protocol: str) -> None:
    await process(cos, "acc-2", bank_pb2.OpenAccount(owner="Bob", initial_balance=10))
    with pytest.raises(aio.AioRpcError) as refused:
        await process(cos, "acc-2", bank_pb2.Withdraw(amount=500))
    with pytest.raises(aio.AioRpcError) as unknown:
        await process(cos, "acc-2", wrappers_pb2.StringValue(value="not a bank command"))
    if sdk_protocol == "grpc":
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert dict(info.metadata) == {"balance": "10", "requested": "500"}
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:  # the HTTP protocol cannot carry a status: the node answers INTERNAL quoting the handler's body
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        assert "insufficient funds" in str(refused.value.details())
        assert unknown.value.code() == grpc.StatusCode.INTERNAL
    assert "unknown command type google.protobuf.StringValue" in str(unknown.value.details())
    # nothing was written by the refused commands, and the handler keeps serving
    assert (await process(cos, "acc-2", bank_pb2.Deposit(amount=1))).balance == 11
    stored = await cos.GetState(pb.GetStateRequest(entity_id="acc-2"), timeout=30)
    assert stored.meta.revision_number == 2
