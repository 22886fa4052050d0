"""Helpers for callers of the bank: build command Anys for `ProcessCommand` and read the state back.

request = ProcessCommandRequest(entity_id="acc-1", command=deposit(2_500))
account = account_from_any(response.state)
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2


def open_account(owner: str, initial: int = 0) -> any_pb2.Any:
    """Open an account for `owner` holding `initial` cents."""
    return _pack(bank_pb2.OpenAccount(owner=owner, initial_balance=initial))


def deposit(amount: int, reference: str = "") -> any_pb2.Any:
    """Add `amount` cents; `reference` is kept in the MoneyDeposited event (empty: none)."""
    return _pack(bank_pb2.Deposit(amount=amount, reference=reference))


def withdraw(amount: int) -> any_pb2.Any:
    """Take out `amount` cents."""
    return _pack(bank_pb2.Withdraw(amount=amount))


def transfer_out(amount: int, fee: int, to: str) -> any_pb2.Any:
    """Send `amount` cents to account `to` and charge `fee` cents: the handler answers two events."""
    return _pack(bank_pb2.TransferOut(amount=amount, fee=fee, to_account=to))


def get_balance() -> any_pb2.Any:
    """A read-only command: no event, CoS replies with the current state."""
    return _pack(bank_pb2.GetBalance())


def account_from_any(state: any_pb2.Any) -> bank_pb2.BankAccount:
    """The BankAccount packed in `state`; ValueError if it holds anything else (e.g. a new entity's Empty)."""
    account = bank_pb2.BankAccount()
    if not state.Unpack(account):
        raise ValueError(
            f"expected a {bank_pb2.BankAccount.DESCRIPTOR.full_name} state, "
            f"got {state.type_url or 'an empty Any'}"
        )
    return account


def _pack(command: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(command)
    return packed
