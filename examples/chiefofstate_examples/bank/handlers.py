"""The bank's rules, written with the Python developer kit (`chiefofstate.sdk`, docs/python.md).

`Bank` is the write handler: a `@command` method decides which events a command produces, an `@event`
method folds one event into the account. The account id is the Chief of State entity id; money is in
integer cents. `Balances` is the read handler: a projection of every account's balance.

write_handler.py, http_write_handler.py and read_handler.py serve them as programs; hooks.py holds the
fault injection Chief of State's own tests switch on.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    FeeCharged,
    GetBalance,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    TransferOut,
    Withdraw,
)

# protobuf int64: a balance past this cannot be stored in BankAccount.balance
MAX_BALANCE: Final = 2**63 - 1
ERROR_DOMAIN: Final = "bank.example"
INSUFFICIENT_FUNDS_REASON: Final = "INSUFFICIENT_FUNDS"


def insufficient_funds(balance: int, requested: int) -> Rejected:
    """FAILED_PRECONDITION with a `google.rpc.ErrorInfo` carrying both numbers, so a caller can act on
    them without parsing the message."""
    return Rejected(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"insufficient funds: balance {balance}, requested {requested}",
        details=[
            error_details_pb2.ErrorInfo(
                reason=INSUFFICIENT_FUNDS_REASON,
                domain=ERROR_DOMAIN,
                metadata={"balance": str(balance), "requested": str(requested)},
            )
        ],
    )


def _invalid(message: str) -> Rejected:
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT, message)


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise _invalid(f"{name} must be greater than 0 (got {value})")


def _require_open(state: BankAccount, meta: MetaData) -> None:
    # An entity with no event yet gets an all-default state; an opened account always has its id.
    if not state.account_id:
        raise Rejected(grpc.StatusCode.NOT_FOUND, f"account {meta.entity_id} does not exist")


class Bank(WriteHandler[BankAccount]):
    """Accounts in integer cents. A command's own arguments are checked first, then whether the account
    exists, then whether the balance covers it."""

    @command(OpenAccount)
    def open(self, command: OpenAccount, state: BankAccount, meta: MetaData) -> AccountOpened:
        if not command.owner:
            raise _invalid("owner must not be empty")
        # opening with nothing in it is normal banking; only a negative start is nonsense
        if command.initial_balance < 0:
            raise _invalid(f"initial_balance must not be negative (got {command.initial_balance})")
        if state.account_id:
            raise Rejected(grpc.StatusCode.ALREADY_EXISTS, f"account {meta.entity_id} already exists")
        return AccountOpened(account_id=meta.entity_id, owner=command.owner, balance=command.initial_balance)

    @command(Deposit)
    def deposit(self, command: Deposit, state: BankAccount, meta: MetaData) -> MoneyDeposited:
        _positive("amount", command.amount)
        _require_open(state, meta)
        if state.balance + command.amount > MAX_BALANCE:
            raise Rejected(
                grpc.StatusCode.OUT_OF_RANGE,
                f"deposit of {command.amount} would take the balance past {MAX_BALANCE}",
            )
        return MoneyDeposited(amount=command.amount, reference=command.reference)

    @command(Withdraw)
    def withdraw(self, command: Withdraw, state: BankAccount, meta: MetaData) -> MoneyWithdrawn:
        _positive("amount", command.amount)
        _require_open(state, meta)
        if command.amount > state.balance:
            raise insufficient_funds(state.balance, command.amount)
        return MoneyWithdrawn(amount=command.amount)

    @command(TransferOut)
    def transfer_out(
        self, command: TransferOut, state: BankAccount, meta: MetaData
    ) -> tuple[MoneyWithdrawn, FeeCharged]:
        _positive("amount", command.amount)
        # a free transfer still records its FeeCharged event, so the two-event shape never changes
        if command.fee < 0:
            raise _invalid(f"fee must not be negative (got {command.fee})")
        if not command.to_account:
            raise _invalid("to_account must not be empty")
        _require_open(state, meta)
        requested = command.amount + command.fee
        if requested > state.balance:
            raise insufficient_funds(state.balance, requested)
        # Two events on purpose: the example exercises the several-events path of a command.
        return (
            MoneyWithdrawn(amount=command.amount),
            FeeCharged(amount=command.fee, reason=f"transfer to {command.to_account}"),
        )

    @command(GetBalance)
    def balance(self, command: GetBalance, state: BankAccount, meta: MetaData) -> None:
        # a read: no event, and the caller reads the balance from the unchanged state CoS replies with
        _require_open(state, meta)

    @event(AccountOpened)
    def opened(self, event: AccountOpened, state: BankAccount, meta: MetaData) -> BankAccount:
        if state.account_id:
            raise _invalid(f"AccountOpened cannot apply: account {meta.entity_id} is already open")
        return BankAccount(account_id=event.account_id, owner=event.owner, balance=event.balance)

    @event(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, state: BankAccount, meta: MetaData) -> BankAccount:
        return _with_balance(state, meta, "MoneyDeposited", state.balance + event.amount)

    # no balance check in the folds below: events are facts the command methods already accepted
    @event(MoneyWithdrawn)
    def withdrawn(self, event: MoneyWithdrawn, state: BankAccount, meta: MetaData) -> BankAccount:
        return _with_balance(state, meta, "MoneyWithdrawn", state.balance - event.amount)

    @event(FeeCharged)
    def fee_charged(self, event: FeeCharged, state: BankAccount, meta: MetaData) -> BankAccount:
        return _with_balance(state, meta, "FeeCharged", state.balance - event.amount)


def _with_balance(state: BankAccount, meta: MetaData, event_name: str, balance: int) -> BankAccount:
    if not state.account_id:
        raise _invalid(f"{event_name} cannot apply: account {meta.entity_id} is not open")
    return BankAccount(account_id=state.account_id, owner=state.owner, balance=balance)


@dataclass(frozen=True)
class Account:
    """One line of the projection."""

    owner: str
    balance: int  # cents
    revision: int


class Balances(ReadHandler[BankAccount]):
    """A projection in memory: each account's latest state, by entity id. Every event carries the
    account's resulting state, so a redelivered or older event (at-least-once delivery) changes nothing."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}

    @property
    def balances(self) -> dict[str, int]:
        """Each account's balance in cents."""
        return {account_id: account.balance for account_id, account in self.accounts.items()}

    @handles(AccountOpened, MoneyDeposited, MoneyWithdrawn, FeeCharged)
    def record(self, event: Message, state: BankAccount, meta: MetaData) -> None:
        self.apply(meta.entity_id, meta.revision_number, state)

    def apply(self, entity_id: str, revision: int, state: BankAccount) -> Account:
        """Keep `state` unless a later revision is already known; the account as it now stands."""
        known = self.accounts.get(entity_id)
        if known is None or revision > known.revision:
            self.accounts[entity_id] = Account(state.owner, state.balance, revision)
        return self.accounts[entity_id]
