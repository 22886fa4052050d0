"""SDK read handlers served over gRPC and HTTP and called as the node calls them (docs/contract.md §5.3)."""

from __future__ import annotations

import grpc
import httpx
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Balances
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from chiefofstate.core.json_codec import encode_any, message_to_json
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.gen.chief_of_state.v1.readside_pb2_grpc import ReadSideHandlerServiceStub
from chiefofstate.sdk import ReadHandler, handles, start


def packed(message: Message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


class Picky(ReadHandler[bank_pb2.BankAccount]):
    """Refuses deposits with a reference, fails on withdrawals, and wants to hear of every event type."""

    ignore_unknown = False

    @handles(bank_pb2.MoneyDeposited)
    async def deposited(
        self, event: bank_pb2.MoneyDeposited, state: bank_pb2.BankAccount, meta: MetaData
    ) -> bool:
        return not event.reference

    @handles(bank_pb2.MoneyWithdrawn)
    def withdrawn(self, event: bank_pb2.MoneyWithdrawn, state: bank_pb2.BankAccount, meta: MetaData) -> None:
        raise RuntimeError("the read model is down")


def request(event: Message, balance: int, entity: str = "acc-1") -> HandleReadSideRequest:
    return HandleReadSideRequest(
        event=packed(event),
        state=packed(bank_pb2.BankAccount(account_id=entity, balance=balance)),
        meta=MetaData(entity_id=entity, revision_number=2),
        read_side_id="balances",
    )


async def test_grpc_delivery_reaches_the_typed_method_and_unknown_events_are_acknowledged() -> None:
    balances = Balances()
    running = await start(balances, port=0)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = ReadSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.HandleReadSide(request(bank_pb2.MoneyDeposited(amount=5), 105))
            assert reply.successful
            assert balances.balances == {"acc-1": 105}
            ignored = await stub.HandleReadSide(request(wrappers_pb2.StringValue(value="?"), 104, "acc-2"))
            assert ignored.successful
            assert "acc-2" not in balances.balances
    finally:
        await running.stop()


async def test_grpc_failures_false_raised_and_unknown() -> None:
    running = await start(Picky(), port=0)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = ReadSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]
            assert (await stub.HandleReadSide(request(bank_pb2.MoneyDeposited(amount=5), 5))).successful
            refused = await stub.HandleReadSide(request(bank_pb2.MoneyDeposited(amount=5, reference="r"), 5))
            assert not refused.successful
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.HandleReadSide(request(bank_pb2.MoneyWithdrawn(amount=5), 0))
            assert raised.value.code() == grpc.StatusCode.INTERNAL
            assert "the read model is down" in str(raised.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.HandleReadSide(request(bank_pb2.FeeCharged(amount=1), 0))
            assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown event type bank.v1.FeeCharged" in str(unknown.value.details())
    finally:
        await running.stop()


async def test_http_delivery_uses_the_node_json_encoding() -> None:
    balances = Balances()
    running = await start(balances, port=0, protocol="http")
    try:
        async with httpx.AsyncClient(base_url=f"http://{running.address}", timeout=10) as http:
            body = {
                "event": encode_any(packed(bank_pb2.AccountOpened(account_id="acc-9", balance=7))),
                "state": encode_any(packed(bank_pb2.BankAccount(account_id="acc-9", balance=7))),
                "meta": {"entity_id": "acc-9", "revision_number": 1, "revision_date": "2025-01-31T10:00:00Z"},
                "read_side_id": "balances",
            }
            answer = await http.post("/v1/readside/handle", json=body)
            assert answer.status_code == 200 and answer.json() == {"successful": True}
            assert balances.balances == {"acc-9": 7}
            wrong_state = dict(body, state=encode_any(packed(bank_pb2.Deposit(amount=1))))
            refused = await http.post("/v1/readside/handle", json=wrong_state)
            assert refused.status_code == 400
            assert "bank.v1.Deposit" in refused.json()["error"]
    finally:
        await running.stop()


class PerReadSide(ReadHandler[bank_pb2.BankAccount]):
    """Counts deposits per read side: a method declaring a fifth parameter gets the read side id."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @handles(bank_pb2.MoneyDeposited)
    async def deposited(
        self, event: bank_pb2.MoneyDeposited, state: bank_pb2.BankAccount, meta: MetaData, read_side_id: str
    ) -> None:
        self.seen.append((read_side_id, meta.entity_id))

    @handles(bank_pb2.MoneyWithdrawn)
    def withdrawn(self, event: bank_pb2.MoneyWithdrawn, state: bank_pb2.BankAccount, meta: MetaData) -> None:
        self.seen.append(("(not asked)", meta.entity_id))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_a_method_with_a_fifth_parameter_gets_the_read_side_id(protocol: str) -> None:
    handler = PerReadSide()
    audit = request(bank_pb2.MoneyDeposited(amount=5), 105)
    audit.read_side_id = "audit"
    running = await start(handler, port=0, protocol="grpc" if protocol == "grpc" else "http")
    try:
        if protocol == "grpc":
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = ReadSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]
                for delivery in (audit, request(bank_pb2.MoneyDeposited(amount=5), 105, "acc-2")):
                    assert (await stub.HandleReadSide(delivery)).successful
                assert (await stub.HandleReadSide(request(bank_pb2.MoneyWithdrawn(amount=1), 104))).successful
        else:
            async with httpx.AsyncClient(base_url=f"http://{running.address}") as client:
                for delivery in (audit, request(bank_pb2.MoneyDeposited(amount=5), 105, "acc-2")):
                    answer = await client.post("/v1/readside/handle", json=message_to_json(delivery))
                    assert answer.json() == {"successful": True}
    finally:
        await running.stop()
    assert handler.seen[:2] == [("audit", "acc-1"), ("balances", "acc-2")]
    if protocol == "grpc":
        assert handler.seen[2] == ("(not asked)", "acc-1")
