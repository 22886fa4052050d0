"""The bank's rules, free of I/O: which events a command produces and how an event changes an account.

`decide` and `evolve` are the two halves of a Chief of State write handler (docs/contract.md §2.3): CoS calls
`HandleCommand` to get events (`decide`), then `HandleEvent` once per event to fold it into the state
(`evolve`). Both work on packed `google.protobuf.Any` values because that is what CoS sends; the
account id is the CoS entity id (`meta.entity_id`). Money is in integer cents.

A rule that refuses a command raises `BankError`, which carries the gRPC status it should become so the
server (write_handler.py) can map it in one place.
"""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2

# protobuf int64: a balance past this cannot be stored in BankAccount.balance
MAX_BALANCE: Final = 2**63 - 1

_COMMAND_CLASSES: Final[dict[str, type[Message]]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        bank_pb2.OpenAccount,
        bank_pb2.Deposit,
        bank_pb2.Withdraw,
        bank_pb2.TransferOut,
        bank_pb2.GetBalance,
    )
}
_EVENT_CLASSES: Final[dict[str, type[Message]]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        bank_pb2.AccountOpened,
        bank_pb2.MoneyDeposited,
        bank_pb2.MoneyWithdrawn,
        bank_pb2.FeeCharged,
    )
}

COMMAND_TYPES: Final[tuple[str, ...]] = tuple(_COMMAND_CLASSES)
# what to list in COS_WRITE_SIDE_STATE_PROTOS / COS_WRITE_SIDE_EVENT_PROTOS with proto validation on (§3.12)
ACCOUNT_STATE_TYPE: Final = bank_pb2.BankAccount.DESCRIPTOR.full_name
EVENT_TYPES: Final[tuple[str, ...]] = tuple(_EVENT_CLASSES)

# CoS sends a packed google.protobuf.Empty as the state of an entity with no event yet (docs/contract.md §3.4)
_NEW_ENTITY_STATE_SUFFIX: Final = "google.protobuf.Empty"


class BankError(Exception):
    """A command or event the bank refuses, with the gRPC status it becomes."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class InsufficientFunds(BankError):
    """A withdrawal or transfer asks for more than the balance; carries both numbers for rich details."""

    def __init__(self, balance: int, requested: int) -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"insufficient funds: balance {balance}, requested {requested}",
        )
        self.balance = balance
        self.requested = requested


def decide(command: any_pb2.Any, prior_state: any_pb2.Any, prior_meta: MetaData) -> list[any_pb2.Any]:
    """The events `command` produces for the account in `prior_state`; [] for a read-only command.

    Raises BankError when the command is refused. Checks run in this order: the command's type, its
    own arguments, whether the account exists, then whether the balance covers it.
    """
    request = _unpack(command, _COMMAND_CLASSES, "command")
    _check_arguments(request)
    account_id = prior_meta.entity_id
    account = _account_or_none(prior_state)

    if isinstance(request, bank_pb2.OpenAccount):
        if account is not None:
            raise BankError(grpc.StatusCode.ALREADY_EXISTS, f"account {account_id} already exists")
        opened = bank_pb2.AccountOpened(
            account_id=account_id, owner=request.owner, balance=request.initial_balance
        )
        return [_pack(opened)]

    if account is None:
        raise BankError(grpc.StatusCode.NOT_FOUND, f"account {account_id} does not exist")

    match request:
        case bank_pb2.Deposit():
            if account.balance + request.amount > MAX_BALANCE:
                raise BankError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"deposit of {request.amount} would take the balance past {MAX_BALANCE}",
                )
            return [_pack(bank_pb2.MoneyDeposited(amount=request.amount, reference=request.reference))]
        case bank_pb2.Withdraw():
            if request.amount > account.balance:
                raise InsufficientFunds(account.balance, request.amount)
            return [_pack(bank_pb2.MoneyWithdrawn(amount=request.amount))]
        case bank_pb2.TransferOut():
            requested = request.amount + request.fee
            if requested > account.balance:
                raise InsufficientFunds(account.balance, requested)
            # Two events on purpose: the example exists to exercise CoS's several-events path (§3.9, D1).
            return [
                _pack(bank_pb2.MoneyWithdrawn(amount=request.amount)),
                _pack(bank_pb2.FeeCharged(amount=request.fee, reason=f"transfer to {request.to_account}")),
            ]
        case _:
            # GetBalance: the caller reads the balance from the unchanged state CoS replies with (§3.7)
            return []


def evolve(event: any_pb2.Any, prior_state: any_pb2.Any, meta: MetaData) -> any_pb2.Any:
    """The account state after `event`, packed; raises BankError(INVALID_ARGUMENT) if it cannot apply."""
    fact = _unpack(event, _EVENT_CLASSES, "event")
    account = _account_or_none(prior_state)

    if isinstance(fact, bank_pb2.AccountOpened):
        if account is not None:
            raise BankError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"AccountOpened cannot apply: account {meta.entity_id} is already open",
            )
        return _pack(bank_pb2.BankAccount(account_id=fact.account_id, owner=fact.owner, balance=fact.balance))

    if account is None:
        raise BankError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{fact.DESCRIPTOR.name} cannot apply: account {meta.entity_id} is not open",
        )

    match fact:
        case bank_pb2.MoneyDeposited():
            account.balance += fact.amount
        case bank_pb2.MoneyWithdrawn() | bank_pb2.FeeCharged():
            # no balance check here: events are facts already accepted by `decide`
            account.balance -= fact.amount
    return _pack(account)


def _check_arguments(request: Message) -> None:
    def positive(name: str, value: int) -> None:
        if value <= 0:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be greater than 0 (got {value})")

    match request:
        case bank_pb2.OpenAccount():
            if not request.owner:
                raise BankError(grpc.StatusCode.INVALID_ARGUMENT, "owner must not be empty")
            # opening with nothing in it is normal banking; only a negative start is nonsense
            if request.initial_balance < 0:
                raise BankError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"initial_balance must not be negative (got {request.initial_balance})",
                )
        case bank_pb2.Deposit() | bank_pb2.Withdraw():
            positive("amount", request.amount)
        case bank_pb2.TransferOut():
            positive("amount", request.amount)
            # a free transfer still records its FeeCharged event, so the two-event shape never changes
            if request.fee < 0:
                raise BankError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"fee must not be negative (got {request.fee})"
                )
            if not request.to_account:
                raise BankError(grpc.StatusCode.INVALID_ARGUMENT, "to_account must not be empty")


def _unpack(packed: any_pb2.Any, known: dict[str, type[Message]], kind: str) -> Message:
    if not packed.type_url:
        expected = ", ".join(known)
        raise BankError(
            grpc.StatusCode.INVALID_ARGUMENT, f"missing {kind}: send an Any packing one of {expected}"
        )
    cls = known.get(packed.TypeName())
    if cls is None:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown {kind} type: {packed.type_url}")
    unpacked = cls()
    try:
        unpacked.ParseFromString(packed.value)
    except DecodeError as error:
        raise BankError(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed {kind} {packed.type_url}: {error}"
        ) from error
    return unpacked


def _account_or_none(state: any_pb2.Any) -> bank_pb2.BankAccount | None:
    if state.type_url.endswith(_NEW_ENTITY_STATE_SUFFIX):
        return None
    account = bank_pb2.BankAccount()
    if not state.Unpack(account):
        # CoS only ever sends Empty or a state this handler produced; anything else means a broken journal
        raise BankError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unexpected state type: {state.type_url or '<empty Any>'} (want {ACCOUNT_STATE_TYPE})",
        )
    return account


def _pack(value: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed
