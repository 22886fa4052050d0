"""The bank on the Python developer kit (`chiefofstate.sdk`): the same rules as the hand-written bank
handler, as decorated methods on typed messages.

    python -m chiefofstate_examples.sdk_bank [--port 50051] [--protocol grpc|http]

serves the write handler; `--read-side` serves the `Balances` read handler instead.
"""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import ReadHandler, Rejected, WriteHandler, command, event, handles
from chiefofstate_examples.bank.gen.bank.v1.bank_pb2 import (
    AccountOpened,
    BankAccount,
    Deposit,
    GetBalance,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
)

ERROR_DOMAIN: Final = "bank.example"


def _require_open(state: BankAccount, meta: MetaData) -> None:
    if meta.revision_number == 0:
        raise Rejected(grpc.StatusCode.NOT_FOUND, "no such account")


class Bank(WriteHandler[BankAccount]):
    """Accounts in integer cents; the account id is the entity id."""

    @command(OpenAccount)
    def open(self, command: OpenAccount, state: BankAccount, meta: MetaData) -> AccountOpened:
        if meta.revision_number > 0:
            raise Rejected(grpc.StatusCode.ALREADY_EXISTS, "account already open")
        if command.initial_balance < 0:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "initial balance must not be negative")
        return AccountOpened(account_id=meta.entity_id, owner=command.owner, balance=command.initial_balance)

    @command(Deposit)
    def deposit(self, command: Deposit, state: BankAccount, meta: MetaData) -> MoneyDeposited:
        _require_open(state, meta)
        if command.amount <= 0:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "amount must be positive")
        return MoneyDeposited(amount=command.amount, reference=command.reference)

    @command(Withdraw)
    async def withdraw(self, command: Withdraw, state: BankAccount, meta: MetaData) -> MoneyWithdrawn:
        _require_open(state, meta)
        if command.amount > state.balance:
            raise Rejected(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"insufficient funds: balance {state.balance}, requested {command.amount}",
                details=[
                    error_details_pb2.ErrorInfo(
                        reason="INSUFFICIENT_FUNDS",
                        domain=ERROR_DOMAIN,
                        metadata={"balance": str(state.balance), "requested": str(command.amount)},
                    )
                ],
            )
        return MoneyWithdrawn(amount=command.amount)

    @command(GetBalance)
    def balance(self, command: GetBalance, state: BankAccount, meta: MetaData) -> None:
        _require_open(state, meta)  # a read: no event, CoS answers with the current state

    @event(AccountOpened)
    def opened(self, event: AccountOpened, state: BankAccount, meta: MetaData) -> BankAccount:
        return BankAccount(account_id=event.account_id, owner=event.owner, balance=event.balance)

    @event(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, state: BankAccount, meta: MetaData) -> BankAccount:
        return BankAccount(
            account_id=state.account_id, owner=state.owner, balance=state.balance + event.amount
        )

    @event(MoneyWithdrawn)
    async def withdrawn(self, event: MoneyWithdrawn, state: BankAccount, meta: MetaData) -> BankAccount:
        return BankAccount(
            account_id=state.account_id, owner=state.owner, balance=state.balance - event.amount
        )


class Balances(ReadHandler[BankAccount]):
    """A read model in memory: each account's latest balance, by entity id."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}

    @handles(AccountOpened, MoneyDeposited, MoneyWithdrawn)
    def record(self, event: Message, state: BankAccount, meta: MetaData) -> None:
        self.balances[meta.entity_id] = state.balance
