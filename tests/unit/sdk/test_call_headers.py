"""call_headers(): a command method sees the headers of its call, over gRPC, over HTTP and in process."""

from __future__ import annotations

import base64

import grpc
import httpx
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf import any_pb2, empty_pb2

from chiefofstate.core.json_codec import decode_any, encode_any
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceStub
from chiefofstate.sdk import WriteHandler, call_headers, command, event, start
from chiefofstate.testing import InProcessNode


class Echo(WriteHandler[bank_pb2.BankAccount]):
    """Puts the caller's x-request-id (and the size of x-raw-bin) into the event it makes."""

    @command(bank_pb2.Deposit)
    async def deposit(
        self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData
    ) -> bank_pb2.MoneyDeposited:
        headers = call_headers()
        raw = headers.get("x-raw-bin", b"")
        return bank_pb2.MoneyDeposited(
            amount=len(raw) if isinstance(raw, bytes) else -1, reference=str(headers.get("x-request-id", ""))
        )

    @event(bank_pb2.MoneyDeposited)
    def deposited(
        self, event: bank_pb2.MoneyDeposited, state: bank_pb2.BankAccount, meta: MetaData
    ) -> bank_pb2.BankAccount:
        return bank_pb2.BankAccount(owner=event.reference, balance=state.balance + event.amount)


def packed(message: bank_pb2.Deposit | empty_pb2.Empty) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


REQUEST = HandleCommandRequest(
    command=packed(bank_pb2.Deposit(amount=1)), prior_state=packed(empty_pb2.Empty())
)


def deposited(value: any_pb2.Any) -> bank_pb2.MoneyDeposited:
    event = bank_pb2.MoneyDeposited()
    assert value.Unpack(event)
    return event


async def test_over_grpc_the_call_metadata_is_seen() -> None:
    running = await start(Echo(), port=0)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = WriteSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.HandleCommand(
                REQUEST, metadata=(("x-request-id", "r-1"), ("x-raw-bin", b"\x00\x01"))
            )
            assert (deposited(reply.events[0]).reference, deposited(reply.events[0]).amount) == ("r-1", 2)
            plain = await stub.HandleCommand(REQUEST)
            assert deposited(plain.events[0]).reference == ""
    finally:
        await running.stop()
    assert call_headers() == {}  # nothing leaks outside a call


async def test_over_http_bin_headers_are_decoded() -> None:
    running = await start(Echo(), port=0, protocol="http")
    try:
        async with httpx.AsyncClient(base_url=f"http://{running.address}", timeout=10) as http:
            answer = await http.post(
                "/v1/writeside/handleCommand",
                json={"command": encode_any(REQUEST.command), "prior_state": encode_any(REQUEST.prior_state)},
                headers={"x-request-id": "r-2", "x-raw-bin": base64.b64encode(b"abc").decode()},
            )
        assert answer.status_code == 200
        event = deposited(decode_any(answer.json()["events"][0], "event"))
        assert (event.reference, event.amount) == ("r-2", 3)
    finally:
        await running.stop()


async def test_in_process_the_propagated_headers_are_seen() -> None:
    env = {"COS_WRITE_SIDE_PROPAGATED_HEADERS": "x-request-id"}
    async with InProcessNode(Echo(), env=env) as node:
        state, _ = await node.process("acc-1", bank_pb2.Deposit(amount=1), headers={"x-request-id": "r-3"})
    assert state.owner == "r-3"
