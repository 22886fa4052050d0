"""SDK write handlers served for real (gRPC and HTTP servers in this process) and called through the
published protocol only: a WriteSideHandlerService stub, or JSON bodies posted as the node posts them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank
from google.protobuf import any_pb2, empty_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from chiefofstate.core.json_codec import decode_any, encode_any
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest, HandleEventRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceStub
from chiefofstate.sdk import RunningHandler, WriteHandler, command, event, start


def packed(message: Message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


NEW = packed(empty_pb2.Empty())
OPEN_ACCOUNT = bank_pb2.BankAccount(account_id="acc-1", owner="Ada", balance=100)


def meta(revision: int, entity: str = "acc-1") -> MetaData:
    return MetaData(entity_id=entity, revision_number=revision)


class Broken(WriteHandler[bank_pb2.BankAccount]):
    """Handler bugs the SDK must report as INTERNAL instead of sending nonsense to the node."""

    @command(bank_pb2.Deposit)
    def deposit(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> object:
        return "not an event"  # type: ignore[return-value]

    @event(bank_pb2.MoneyDeposited)
    def deposited(self, event: bank_pb2.MoneyDeposited, state: bank_pb2.BankAccount, meta: MetaData):  # type: ignore[no-untyped-def]
        return wrappers_pb2.StringValue(value="not the state")


@pytest.fixture
async def served() -> AsyncIterator[RunningHandler]:
    running = await start(Bank(), port=0)
    yield running
    await running.stop()


@pytest.fixture
async def stub(served: RunningHandler) -> AsyncIterator[WriteSideHandlerServiceStub]:
    async with grpc.aio.insecure_channel(served.address) as channel:
        yield WriteSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]


async def test_a_command_becomes_its_event_and_the_event_folds_into_the_typed_state(
    stub: WriteSideHandlerServiceStub,
) -> None:
    reply = await stub.HandleCommand(
        HandleCommandRequest(
            command=packed(bank_pb2.OpenAccount(owner="Ada", initial_balance=100)),
            prior_state=NEW,
            prior_event_meta=meta(0),
        )
    )
    assert not reply.HasField("event")  # only `events`, never the deprecated field
    assert [item.type_url for item in reply.events] == ["type.googleapis.com/bank.v1.AccountOpened"]
    folded = await stub.HandleEvent(
        HandleEventRequest(event=reply.events[0], prior_state=NEW, event_meta=meta(1))
    )
    state = bank_pb2.BankAccount()
    assert folded.resulting_state.Unpack(state)
    assert state == OPEN_ACCOUNT


async def test_async_methods_and_a_read_only_command(stub: WriteSideHandlerServiceStub) -> None:
    reply = await stub.HandleCommand(
        HandleCommandRequest(
            command=packed(bank_pb2.Withdraw(amount=30)),
            prior_state=packed(OPEN_ACCOUNT),
            prior_event_meta=meta(1),
        )
    )
    folded = await stub.HandleEvent(
        HandleEventRequest(event=reply.events[0], prior_state=packed(OPEN_ACCOUNT), event_meta=meta(2))
    )
    state = bank_pb2.BankAccount()
    folded.resulting_state.Unpack(state)
    assert state.balance == 70
    noop = await stub.HandleCommand(
        HandleCommandRequest(
            command=packed(bank_pb2.GetBalance()), prior_state=packed(OPEN_ACCOUNT), prior_event_meta=meta(1)
        )
    )
    assert list(noop.events) == [] and not noop.HasField("event")


async def test_a_rejection_keeps_its_code_message_and_rich_details(stub: WriteSideHandlerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleCommand(
            HandleCommandRequest(
                command=packed(bank_pb2.Withdraw(amount=500)),
                prior_state=packed(OPEN_ACCOUNT),
                prior_event_meta=meta(1),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "insufficient funds: balance 100, requested 500"
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INSUFFICIENT_FUNDS",
        "bank.example",
        {"balance": "100", "requested": "500"},
    )


async def test_an_unknown_command_type_is_invalid_argument_naming_it(
    stub: WriteSideHandlerServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleCommand(
            HandleCommandRequest(
                command=packed(wrappers_pb2.Int64Value(value=1)), prior_state=NEW, prior_event_meta=meta(0)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown command type google.protobuf.Int64Value" in str(caught.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as unknown_event:
        await stub.HandleEvent(
            HandleEventRequest(
                event=packed(wrappers_pb2.Int64Value(value=1)), prior_state=NEW, event_meta=meta(1)
            )
        )
    assert unknown_event.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown event type google.protobuf.Int64Value" in str(unknown_event.value.details())


async def test_a_prior_state_of_another_type_is_refused(stub: WriteSideHandlerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleCommand(
            HandleCommandRequest(
                command=packed(bank_pb2.Deposit(amount=5)),
                prior_state=packed(wrappers_pb2.StringValue(value="x")),
                prior_event_meta=meta(1),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "google.protobuf.StringValue" in str(caught.value.details())
    assert "bank.v1.BankAccount" in str(caught.value.details())


async def test_handler_bugs_are_internal_and_the_server_keeps_serving() -> None:
    running = await start(Broken(), port=0)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            broken = WriteSideHandlerServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as bad_events:
                await broken.HandleCommand(
                    HandleCommandRequest(
                        command=packed(bank_pb2.Deposit(amount=5)), prior_state=NEW, prior_event_meta=meta(0)
                    )
                )
            assert bad_events.value.code() == grpc.StatusCode.INTERNAL
            assert "Broken.deposit returned str" in str(bad_events.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as bad_state:
                await broken.HandleEvent(
                    HandleEventRequest(
                        event=packed(bank_pb2.MoneyDeposited(amount=5)), prior_state=NEW, event_meta=meta(1)
                    )
                )
            assert bad_state.value.code() == grpc.StatusCode.INTERNAL
            assert "not the state type bank.v1.BankAccount" in str(bad_state.value.details())
    finally:
        await running.stop()


async def test_health_and_reflection_are_served(served: RunningHandler) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        for service in ("", "chief_of_state.v1.WriteSideHandlerService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {service.name for service in answer.list_services_response.service}
        assert "chief_of_state.v1.WriteSideHandlerService" in names


async def test_a_busy_port_is_an_os_error(served: RunningHandler) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await start(Bank(), port=served.port)


async def test_the_http_protocol_carries_the_same_rules() -> None:
    running = await start(Bank(), port=0, protocol="http")
    try:
        async with httpx.AsyncClient(base_url=f"http://{running.address}", timeout=10) as http:
            opened = await http.post(
                "/v1/writeside/handleCommand",
                json={
                    "command": encode_any(packed(bank_pb2.OpenAccount(owner="Ada", initial_balance=100))),
                    "prior_state": encode_any(NEW),
                    "prior_event_meta": {"entity_id": "acc-1"},
                },
            )
            assert opened.status_code == 200
            (event_text,) = opened.json()["events"]
            folded = await http.post(
                "/v1/writeside/handleEvent",
                json={
                    "event": event_text,
                    "prior_state": encode_any(NEW),
                    "event_meta": {"entity_id": "acc-1", "revision_number": 1},
                },
            )
            assert folded.status_code == 200
            state = bank_pb2.BankAccount()
            decode_any(folded.json()["resulting_state"], "state").Unpack(state)
            assert state == OPEN_ACCOUNT
            noop = await http.post(
                "/v1/writeside/handleCommand",
                json={
                    "command": encode_any(packed(bank_pb2.GetBalance())),
                    "prior_state": encode_any(packed(OPEN_ACCOUNT)),
                    "prior_event_meta": {"entity_id": "acc-1", "revision_number": 1},
                },
            )
            assert noop.status_code == 200 and noop.json() == {}
            refused = await http.post(
                "/v1/writeside/handleCommand",
                json={
                    "command": encode_any(packed(bank_pb2.Withdraw(amount=500))),
                    "prior_state": encode_any(packed(OPEN_ACCOUNT)),
                    "prior_event_meta": {"entity_id": "acc-1", "revision_number": 1},
                },
            )
            assert refused.status_code == 412
            assert refused.json()["code"] == "FAILED_PRECONDITION"
            info = error_details_pb2.ErrorInfo()
            assert decode_any(refused.json()["details"][0], "detail").Unpack(info)
            assert info.reason == "INSUFFICIENT_FUNDS"
            unknown = await http.post(
                "/v1/writeside/handleCommand",
                json={
                    "command": encode_any(packed(wrappers_pb2.Int64Value(value=1))),
                    "prior_state": encode_any(NEW),
                },
            )
            assert unknown.status_code == 400
            assert "unknown command type google.protobuf.Int64Value" in unknown.json()["error"]
            garbage = await http.post("/v1/writeside/handleEvent", content=b"{not json")
            assert garbage.status_code == 400
            assert (await http.get("/health")).status_code == 200
    finally:
        await running.stop()
