"""The bank example's rules (chiefofstate_examples.bank.handlers, written with the SDK), its test hooks
(write_hooks.py) and its gRPC write handler program (write_handler.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from chiefofstate_examples.bank import client
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank
from chiefofstate_examples.bank.write_hooks import (
    NO_STATE_AMOUNT,
    WRONG_STATE_TYPE_AMOUNT,
    FaultInjection,
    HookedBank,
)
from google.protobuf import any_pb2, empty_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.gen.chief_of_state.v1 import writeside_pb2
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest, HandleEventRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceStub
from chiefofstate.sdk import Rejected, RunningHandler, start
from chiefofstate.sdk.write import handle_command, handle_event

if TYPE_CHECKING:
    # the stub's type for an aio channel exists only for type checkers
    from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import (
        WriteSideHandlerServiceAsyncStub as HandlerStub,
    )

ACCOUNT = "acc-1"
SERVICE_NAME = writeside_pb2.DESCRIPTOR.services_by_name["WriteSideHandlerService"].full_name
ACCOUNT_STATE_TYPE = bank_pb2.BankAccount.DESCRIPTOR.full_name
T = TypeVar("T")
README = Path(__file__).resolve().parents[3] / "examples" / "bank" / "README.md"


def pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def new_entity() -> tuple[any_pb2.Any, MetaData]:
    # exactly what CoS sends before an entity's first event (docs/contract.md §3.4)
    return pack(empty_pb2.Empty()), MetaData(entity_id=ACCOUNT)


def account_state(balance: int, owner: str = "alice") -> tuple[any_pb2.Any, MetaData]:
    state = pack(bank_pb2.BankAccount(account_id=ACCOUNT, owner=owner, balance=balance))
    return state, MetaData(entity_id=ACCOUNT, revision_number=1)


_EVENT_CLASSES = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (bank_pb2.AccountOpened, bank_pb2.MoneyDeposited, bank_pb2.MoneyWithdrawn, bank_pb2.FeeCharged)
}


def unpack_events(events: list[any_pb2.Any]) -> list[object]:
    result: list[object] = []
    for event in events:
        message = _EVENT_CLASSES[event.TypeName()]()
        assert event.Unpack(message)
        result.append(message)
    return result


def finish(call: Coroutine[Any, Any, T]) -> T:
    """The result of a handler call that never waits (the bank's methods are all plain `def`s)."""
    try:
        call.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    call.close()
    raise AssertionError("the handler call waited for something")


def decide(command: any_pb2.Any, prior_state: any_pb2.Any, prior_meta: MetaData) -> list[any_pb2.Any]:
    """What the node's HandleCommand call gets back from the bank."""
    request = HandleCommandRequest(command=command, prior_state=prior_state, prior_event_meta=prior_meta)
    return list(finish(handle_command(Bank(), request)).events)


def evolve(event: any_pb2.Any, prior_state: any_pb2.Any, meta: MetaData) -> any_pb2.Any:
    """What the node's HandleEvent call gets back from the bank."""
    request = HandleEventRequest(event=event, prior_state=prior_state, event_meta=meta)
    return finish(handle_event(Bank(), request)).resulting_state


def refusal(command: any_pb2.Any, state: any_pb2.Any, meta: MetaData) -> Rejected:
    with pytest.raises(Rejected) as caught:
        decide(command, state, meta)
    return caught.value


def insufficient_funds_info(error: Rejected) -> dict[str, str]:
    [detail] = error.details
    assert isinstance(detail, error_details_pb2.ErrorInfo)
    assert (detail.reason, detail.domain) == ("INSUFFICIENT_FUNDS", "bank.example")
    return dict(detail.metadata)


# --- decide -------------------------------------------------------------------------------------------


def test_open_account_on_a_new_entity_names_the_account_after_the_entity() -> None:
    events = decide(client.open_account("alice", 1_000), *new_entity())
    assert unpack_events(events) == [bank_pb2.AccountOpened(account_id=ACCOUNT, owner="alice", balance=1_000)]
    assert events[0].type_url == "type.googleapis.com/bank.v1.AccountOpened"


def test_open_account_with_nothing_in_it_is_allowed() -> None:
    events = decide(client.open_account("alice", 0), *new_entity())
    assert unpack_events(events) == [bank_pb2.AccountOpened(account_id=ACCOUNT, owner="alice", balance=0)]


def test_open_account_twice_is_already_exists() -> None:
    error = refusal(client.open_account("bob", 5), *account_state(100))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.message == "account acc-1 already exists"


@pytest.mark.parametrize(
    "command",
    [client.deposit(1), client.withdraw(1), client.transfer_out(1, 1, "acc-2"), client.get_balance()],
    ids=["deposit", "withdraw", "transfer", "get_balance"],
)
def test_any_other_command_on_a_missing_account_is_not_found(command: any_pb2.Any) -> None:
    error = refusal(command, *new_entity())
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == "account acc-1 does not exist"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (client.deposit(0), "amount must be greater than 0 (got 0)"),
        (client.deposit(-5), "amount must be greater than 0 (got -5)"),
        (client.withdraw(0), "amount must be greater than 0 (got 0)"),
        (client.transfer_out(0, 1, "acc-2"), "amount must be greater than 0 (got 0)"),
        (client.transfer_out(10, -1, "acc-2"), "fee must not be negative (got -1)"),
        (client.transfer_out(10, 1, ""), "to_account must not be empty"),
    ],
)
def test_bad_amounts_are_invalid_argument(command: any_pb2.Any, message: str) -> None:
    error = refusal(command, *account_state(100))
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (client.open_account("", 10), "owner must not be empty"),
        (client.open_account("alice", -1), "initial_balance must not be negative (got -1)"),
    ],
)
def test_bad_open_account_is_invalid_argument(command: any_pb2.Any, message: str) -> None:
    error = refusal(command, *new_entity())
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_deposit_and_withdraw_make_one_event_each() -> None:
    state, meta = account_state(100)
    assert unpack_events(decide(client.deposit(50), state, meta)) == [bank_pb2.MoneyDeposited(amount=50)]
    assert unpack_events(decide(client.withdraw(100), state, meta)) == [bank_pb2.MoneyWithdrawn(amount=100)]


def test_a_deposit_reference_is_kept_in_its_event() -> None:
    # the fault suite finds each acknowledged deposit in the journal by this reference
    state, meta = account_state(100)
    events = unpack_events(decide(client.deposit(5, reference="tok-1"), state, meta))
    assert events == [bank_pb2.MoneyDeposited(amount=5, reference="tok-1")]


def test_withdrawing_more_than_the_balance_is_failed_precondition() -> None:
    error = refusal(client.withdraw(150), *account_state(100))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == "insufficient funds: balance 100, requested 150"
    assert insufficient_funds_info(error) == {"balance": "100", "requested": "150"}


def test_transfer_out_makes_two_events_in_order() -> None:
    events = decide(client.transfer_out(60, 40, "acc-2"), *account_state(100))
    assert unpack_events(events) == [
        bank_pb2.MoneyWithdrawn(amount=60),
        bank_pb2.FeeCharged(amount=40, reason="transfer to acc-2"),
    ]


def test_transfer_out_needs_the_amount_plus_the_fee() -> None:
    error = refusal(client.transfer_out(60, 41, "acc-2"), *account_state(100))
    assert error.message == "insufficient funds: balance 100, requested 101"
    assert insufficient_funds_info(error) == {"balance": "100", "requested": "101"}


def test_get_balance_is_a_no_op() -> None:
    assert decide(client.get_balance(), *account_state(100)) == []


def test_an_unknown_command_type_is_invalid_argument() -> None:
    error = refusal(pack(wrappers_pb2.StringValue(value="hi")), *account_state(100))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("unknown command type google.protobuf.StringValue: Bank handles ")
    assert "bank.v1.OpenAccount" in error.message


def test_a_missing_command_is_invalid_argument() -> None:
    # CoS forwards an absent command as the empty Any (docs/contract.md §3.1)
    error = refusal(any_pb2.Any(), *account_state(100))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("missing command: send an Any packing one of bank.v1.OpenAccount")


def test_a_malformed_command_is_invalid_argument() -> None:
    broken = any_pb2.Any(type_url="type.googleapis.com/bank.v1.Deposit", value=b"\xff\xff")
    error = refusal(broken, *account_state(100))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("command bank.v1.Deposit does not decode")


def test_a_state_of_another_type_is_refused() -> None:
    error = refusal(client.deposit(1), pack(wrappers_pb2.StringValue()), MetaData(entity_id=ACCOUNT))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == (
        "the state is a google.protobuf.StringValue, but this handler's state type is bank.v1.BankAccount"
    )


# --- evolve -------------------------------------------------------------------------------------------


def test_evolve_folds_every_event_kind() -> None:
    state, meta = new_entity()
    for event in (
        bank_pb2.AccountOpened(account_id=ACCOUNT, owner="alice", balance=100),
        bank_pb2.MoneyDeposited(amount=50),
        bank_pb2.MoneyWithdrawn(amount=30),
        bank_pb2.FeeCharged(amount=5, reason="transfer to acc-2"),
    ):
        state = evolve(pack(event), state, meta)
    assert state.TypeName() == ACCOUNT_STATE_TYPE
    assert client.account_from_any(state) == bank_pb2.BankAccount(
        account_id=ACCOUNT, owner="alice", balance=115
    )


def test_evolve_refuses_an_unknown_event() -> None:
    with pytest.raises(Rejected) as caught:
        evolve(pack(wrappers_pb2.StringValue()), *account_state(100))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message.startswith("unknown event type google.protobuf.StringValue: Bank folds ")


@pytest.mark.parametrize(
    ("event", "state_and_meta", "message"),
    [
        (
            bank_pb2.MoneyDeposited(amount=1),
            new_entity(),
            "MoneyDeposited cannot apply: account acc-1 is not open",
        ),
        (
            bank_pb2.AccountOpened(account_id=ACCOUNT, owner="bob"),
            account_state(100),
            "AccountOpened cannot apply: account acc-1 is already open",
        ),
    ],
)
def test_evolve_refuses_an_event_that_does_not_fit_the_state(
    event: object, state_and_meta: tuple[any_pb2.Any, MetaData], message: str
) -> None:
    with pytest.raises(Rejected) as caught:
        evolve(pack(event), *state_and_meta)
    assert (caught.value.code, caught.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


_commands = st.one_of(
    st.builds(client.open_account, st.sampled_from(["alice", "bob"]), st.integers(-5, 500)),
    st.builds(client.deposit, st.integers(-5, 500)),
    st.builds(client.withdraw, st.integers(-5, 500)),
    st.builds(client.transfer_out, st.integers(-5, 500), st.integers(-5, 50), st.just("acc-2")),
    st.just(client.get_balance()),
)


@given(st.lists(_commands, max_size=30))
def test_the_balance_is_never_negative_and_is_the_sum_of_the_events(commands: list[any_pb2.Any]) -> None:
    state, meta = new_entity()
    expected_balance = 0
    for command in commands:
        try:
            events = decide(command, state, meta)
        except Rejected:
            continue
        for event in unpack_events(events):
            meta = MetaData(entity_id=ACCOUNT, revision_number=meta.revision_number + 1)
            state = evolve(pack(event), state, meta)
            match event:
                case bank_pb2.AccountOpened(balance=balance) | bank_pb2.MoneyDeposited(amount=balance):
                    expected_balance += balance
                case bank_pb2.MoneyWithdrawn(amount=amount) | bank_pb2.FeeCharged(amount=amount):
                    expected_balance -= amount
        if meta.revision_number:
            assert client.account_from_any(state).balance == expected_balance >= 0


def test_event_types_list_every_event_the_rules_produce() -> None:
    assert set(Bank.event_types()) == set(_EVENT_CLASSES)


# --- client helpers and README ------------------------------------------------------------------------


def test_account_from_any_refuses_anything_but_a_bank_account() -> None:
    with pytest.raises(ValueError, match="expected a bank.v1.BankAccount state, got .*google.protobuf.Empty"):
        client.account_from_any(new_entity()[0])


def test_the_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its Python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


# --- the gRPC server ----------------------------------------------------------------------------------


@pytest.fixture
async def handler() -> AsyncIterator[RunningHandler]:
    running = await start(HookedBank(FaultInjection(magic_deposit_amounts=True)))
    try:
        yield running
    finally:
        await running.stop(grace=0)


@pytest.fixture
async def stub(handler: RunningHandler) -> AsyncIterator[HandlerStub]:
    async with grpc.aio.insecure_channel(handler.address) as channel:
        yield WriteSideHandlerServiceStub(channel)


async def test_the_server_decides_and_folds_over_grpc(handler: RunningHandler, stub: HandlerStub) -> None:
    assert handler.port != 0
    state, meta = new_entity()

    opened = await stub.HandleCommand(
        HandleCommandRequest(
            command=client.open_account("alice", 1_000), prior_state=state, prior_event_meta=meta
        ),
        timeout=5,
    )
    assert not opened.HasField("event")  # only the repeated field is used (docs/contract.md §2.3)
    [event] = opened.events
    folded = await stub.HandleEvent(
        HandleEventRequest(
            event=event, prior_state=state, event_meta=MetaData(entity_id=ACCOUNT, revision_number=1)
        ),
        timeout=5,
    )
    assert client.account_from_any(folded.resulting_state).balance == 1_000

    no_op = await stub.HandleCommand(
        HandleCommandRequest(command=client.get_balance(), prior_state=folded.resulting_state), timeout=5
    )
    assert list(no_op.events) == []


async def test_the_server_sends_insufficient_funds_as_rich_details(stub: HandlerStub) -> None:
    state, meta = account_state(100)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleCommand(
            HandleCommandRequest(command=client.withdraw(150), prior_state=state, prior_event_meta=meta),
            timeout=5,
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "insufficient funds: balance 100, requested 150"

    trailers = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    assert len(trailers) == 1
    assert isinstance(trailers[0], bytes)
    status = status_pb2.Status.FromString(trailers[0])
    assert (status.code, status.message) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], error.details())
    info = error_details_pb2.ErrorInfo()
    [detail] = status.details
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == ("INSUFFICIENT_FUNDS", "bank.example")
    assert dict(info.metadata) == {"balance": "100", "requested": "150"}


async def test_the_server_sends_other_refusals_as_plain_statuses(stub: HandlerStub) -> None:
    state, meta = new_entity()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleCommand(
            HandleCommandRequest(command=client.deposit(5), prior_state=state, prior_event_meta=meta),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "account acc-1 does not exist"
    trailers = caught.value.trailing_metadata() or ()
    assert "grpc-status-details-bin" not in [key for key, _ in trailers]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleEvent(
            HandleEventRequest(event=pack(wrappers_pb2.StringValue()), prior_state=state), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_server_reports_healthy(handler: RunningHandler) -> None:
    async with grpc.aio.insecure_channel(handler.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("amount", "expected_state_type"),
    [(WRONG_STATE_TYPE_AMOUNT, "type.googleapis.com/google.protobuf.StringValue"), (NO_STATE_AMOUNT, None)],
)
async def test_test_hook_amounts_break_handle_event(
    stub: HandlerStub, amount: int, expected_state_type: str | None
) -> None:
    state, meta = account_state(100)
    decided = await stub.HandleCommand(
        HandleCommandRequest(command=client.deposit(amount), prior_state=state, prior_event_meta=meta),
        timeout=5,
    )
    [event] = decided.events
    reply = await stub.HandleEvent(
        HandleEventRequest(event=event, prior_state=state, event_meta=meta), timeout=5
    )
    if expected_state_type is None:
        assert not reply.HasField("resulting_state")
    else:
        assert reply.resulting_state.type_url == expected_state_type


async def test_test_hook_amounts_are_ordinary_deposits_when_faults_are_off() -> None:
    running = await start(HookedBank(FaultInjection()))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = WriteSideHandlerServiceStub(channel)
            state, meta = account_state(100)
            event = pack(bank_pb2.MoneyDeposited(amount=WRONG_STATE_TYPE_AMOUNT))
            reply = await stub.HandleEvent(
                HandleEventRequest(event=event, prior_state=state, event_meta=meta), timeout=5
            )
            assert client.account_from_any(reply.resulting_state).balance == 100 + WRONG_STATE_TYPE_AMOUNT
    finally:
        await running.stop(grace=0)


async def test_test_hook_delay_makes_handle_command_miss_a_short_deadline() -> None:
    running = await start(HookedBank(FaultInjection(command_delay_ms=2_000)))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = WriteSideHandlerServiceStub(channel)
            state, meta = account_state(100)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.HandleCommand(
                    HandleCommandRequest(command=client.deposit(1), prior_state=state, prior_event_meta=meta),
                    timeout=0.1,
                )
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await running.stop(grace=0)


def test_fault_injection_is_off_unless_the_environment_says_so() -> None:
    assert FaultInjection.from_environment({}) == FaultInjection(
        command_delay_ms=0, magic_deposit_amounts=False
    )
    assert FaultInjection.from_environment(
        {"BANK_HANDLER_DELAY_MS": "250", "BANK_HANDLER_FAULTS": "1"}
    ) == FaultInjection(command_delay_ms=250, magic_deposit_amounts=True)
    with pytest.raises(ValueError, match="BANK_HANDLER_DELAY_MS must be a whole number of milliseconds"):
        FaultInjection.from_environment({"BANK_HANDLER_DELAY_MS": "soon"})
    with pytest.raises(ValueError, match="BANK_HANDLER_FAULTS must be 1 or 0"):
        FaultInjection.from_environment({"BANK_HANDLER_FAULTS": "maybe"})


async def test_serve_refuses_a_port_already_in_use(handler: RunningHandler) -> None:
    with pytest.raises(OSError, match="cannot listen on 127.0.0.1:"):
        await start(HookedBank(), port=handler.port)


@pytest.mark.integration
async def test_the_module_announces_its_port_and_exits_0_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chiefofstate_examples.bank.write_handler",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = re.fullmatch(r"bank write handler \(grpc\) listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{match[1]}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
