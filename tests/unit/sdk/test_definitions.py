"""Mistakes in a handler class are refused when the class is written, not at the first call."""

from __future__ import annotations

import grpc
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank
from google.protobuf import wrappers_pb2

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import ReadHandler, Rejected, WriteHandler, command, event, handles, start


def test_the_state_type_is_read_from_the_generic_argument() -> None:
    assert Bank.state_type is bank_pb2.BankAccount
    assert set(Bank.command_types()) == {
        "bank.v1.OpenAccount",
        "bank.v1.Deposit",
        "bank.v1.Withdraw",
        "bank.v1.TransferOut",
        "bank.v1.GetBalance",
    }
    assert set(Bank.event_types()) == {
        "bank.v1.AccountOpened",
        "bank.v1.MoneyDeposited",
        "bank.v1.MoneyWithdrawn",
        "bank.v1.FeeCharged",
    }


def test_an_event_method_annotated_with_another_state_type_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"returns google.protobuf.StringValue, but the state type is bank.v1"
    ):

        class Wrong(WriteHandler[bank_pb2.BankAccount]):
            @event(bank_pb2.AccountOpened)
            def opened(
                self, event: bank_pb2.AccountOpened, state: wrappers_pb2.StringValue, meta: MetaData
            ) -> wrappers_pb2.StringValue:
                return state


def test_two_methods_for_one_type_are_refused() -> None:
    with pytest.raises(TypeError, match=r"first and second both handle command bank.v1.Deposit"):

        class Twice(WriteHandler[bank_pb2.BankAccount]):
            @command(bank_pb2.Deposit)
            def first(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> None:
                return None

            @command(bank_pb2.Deposit)
            def second(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> None:
                return None


def test_a_decorator_needs_a_message_class() -> None:
    with pytest.raises(TypeError, match="expected a protobuf message class"):
        command("bank.v1.Deposit")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="at least one event type"):
        handles()


def test_a_state_type_that_is_not_a_message_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a protobuf message class"):

        class NotAMessage(WriteHandler[int]):  # type: ignore[type-var]
            pass


async def test_a_handler_without_a_state_type_cannot_be_served() -> None:
    class Untyped(WriteHandler):  # type: ignore[type-arg]
        pass

    with pytest.raises(TypeError, match="has no state type"):
        await start(Untyped())


def test_a_subclass_inherits_and_may_override_bindings() -> None:
    class Audited(Bank):
        @command(bank_pb2.Deposit)
        def deposit(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> None:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "deposits are closed")

    assert Audited.state_type is bank_pb2.BankAccount
    assert set(Audited.command_types()) == set(Bank.command_types())


def test_a_rejection_needs_an_error_code() -> None:
    with pytest.raises(ValueError, match="needs an error code"):
        Rejected(grpc.StatusCode.OK, "fine")


def test_read_handlers_take_their_state_type_the_same_way() -> None:
    class Log(ReadHandler[bank_pb2.BankAccount]):
        @handles(bank_pb2.AccountOpened)
        def opened(self, event: bank_pb2.AccountOpened, state: bank_pb2.BankAccount, meta: MetaData) -> None:
            return None

    assert Log.state_type is bank_pb2.BankAccount
    assert Log.event_types() == ("bank.v1.AccountOpened",)
