"""Library mode: a node in the test's process in front of the SDK bank handler called without RPC, on
the memory store and SQLite (PostgreSQL in tests/integration/test_in_process_node_postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Balances, Bank
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import (
    CosClient,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ReadHandler,
    Unimplemented,
    WriteHandler,
    call_headers,
    command,
    handles,
)
from chiefofstate.testing import InProcessNode, node_fixture

bank_node = node_fixture(Bank)
bank_on_disk = node_fixture(Bank, store="sqlite")
with_read_sides = node_fixture(Bank, read_handlers={"balances": Balances, "audit": lambda: PerSide()})


class Slow(WriteHandler[bank_pb2.BankAccount]):
    @command(bank_pb2.Deposit)
    async def deposit(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> None:
        await asyncio.sleep(30)


class Faulty(WriteHandler[bank_pb2.BankAccount]):
    @command(bank_pb2.Deposit)
    def deposit(self, command: bank_pb2.Deposit, state: bank_pb2.BankAccount, meta: MetaData) -> None:
        raise RuntimeError("bug in the handler")


async def test_commands_run_through_the_node_on_the_memory_store(
    bank_node: InProcessNode[bank_pb2.BankAccount],
) -> None:
    state, meta = await bank_node.process("acc-1", bank_pb2.OpenAccount(owner="Ada", initial_balance=10))
    assert (state.balance, meta.revision_number, meta.entity_id) == (10, 1, "acc-1")
    state, meta = await bank_node.process("acc-1", bank_pb2.Withdraw(amount=4))  # async methods too
    assert (state.balance, meta.revision_number) == (6, 2)
    found = await bank_node.get("acc-1")
    assert found is not None and found[0].balance == 6
    assert await bank_node.get("acc-unknown") is None


async def test_refusals_keep_their_status_and_details(bank_node: InProcessNode[bank_pb2.BankAccount]) -> None:
    await bank_node.process("acc-2", bank_pb2.OpenAccount(owner="Bob", initial_balance=1))
    with pytest.raises(FailedPrecondition) as refused:
        await bank_node.process("acc-2", bank_pb2.Withdraw(amount=5))
    info = refused.value.detail(error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "INSUFFICIENT_FUNDS"
    with pytest.raises(NotFound):
        await bank_node.process("nobody", bank_pb2.Deposit(amount=1))
    with pytest.raises(InvalidArgument, match="unknown command type google.protobuf.Int64Value"):
        await bank_node.process("acc-2", wrappers_pb2.Int64Value(value=1))
    found = await bank_node.get("acc-2")
    assert found is not None and found[1].revision_number == 1  # nothing half-persisted


async def test_the_node_also_serves_grpc_clients(bank_node: InProcessNode[bank_pb2.BankAccount]) -> None:
    await bank_node.process("acc-3", bank_pb2.OpenAccount(owner="Cy", initial_balance=3))
    async with CosClient(bank_node.target, bank_pb2.BankAccount) as client:
        state, meta = await client.process("acc-3", bank_pb2.Deposit(amount=2))
    assert (state.balance, meta.revision_number) == (5, 2)


async def test_sqlite_keeps_the_journal_across_nodes(tmp_path: Path) -> None:
    env = {"COS_DB_PATH": str(tmp_path / "bank.db")}
    async with InProcessNode(Bank(), store="sqlite", env=env) as first:
        await first.process("acc-4", bank_pb2.OpenAccount(owner="Di", initial_balance=8))
    async with InProcessNode(Bank(), store="sqlite", env=env) as second:
        found = await second.get("acc-4")
    assert found is not None and (found[0].owner, found[0].balance) == ("Di", 8)


async def test_the_sqlite_fixture(bank_on_disk: InProcessNode[bank_pb2.BankAccount]) -> None:
    state, _ = await bank_on_disk.process("acc-5", bank_pb2.OpenAccount(owner="Ed", initial_balance=1))
    assert state.owner == "Ed"


async def test_a_handler_bug_is_internal_and_a_hang_is_bounded() -> None:
    async with InProcessNode(Faulty()) as node:
        with pytest.raises(Internal, match="RuntimeError: bug in the handler"):
            await node.process("acc-6", bank_pb2.Deposit(amount=1))
    async with InProcessNode(Slow(), env={"COS_GRPC_CALLS_TIMEOUT": "300"}) as node:
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(node.process("acc-7", bank_pb2.Deposit(amount=1)), 20)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="COS_DB_PATH"):
        InProcessNode(Bank(), store="sqlite")
    with pytest.raises(ValueError, match="memory, sqlite or postgres"):
        InProcessNode(Bank(), store="oracle")  # type: ignore[arg-type]


async def test_subscriptions_follow_the_node_settings() -> None:
    async with InProcessNode(Bank()) as plain, CosClient(plain.target, bank_pb2.BankAccount) as client:
        with pytest.raises(Unimplemented, match="Subscription is not enabled"):
            async with client.subscribe("acc-8") as updates:
                await anext(aiter(updates))
    async with (
        InProcessNode(Bank(), env={"COS_SUBSCRIPTION_ENABLED": "true"}) as node,
        CosClient(node.target, bank_pb2.BankAccount) as client,
        client.subscribe("acc-8") as updates,
    ):
        await node.process("acc-8", bank_pb2.OpenAccount(owner="Hal", initial_balance=2))
        update = await asyncio.wait_for(anext(aiter(updates)), 30)
        assert (update.state.owner, update.meta.revision_number) == ("Hal", 1)


class PerSide(ReadHandler[bank_pb2.BankAccount]):
    """Notes each delivery with the read side id and the entity header it came with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    @handles(bank_pb2.AccountOpened, bank_pb2.MoneyDeposited)
    def record(self, event: Message, state: bank_pb2.BankAccount, meta: MetaData, read_side_id: str) -> None:
        entity_header = call_headers().get("x-cos-entity-id")
        self.seen.append((read_side_id, str(entity_header), meta.revision_number))


async def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_read_handlers_in_process_receive_every_event_with_their_read_side_id(
    with_read_sides: InProcessNode[bank_pb2.BankAccount],
) -> None:
    await with_read_sides.process("acc-r", bank_pb2.OpenAccount(owner="Ann", initial_balance=5))
    await with_read_sides.process("acc-r", bank_pb2.Deposit(amount=7))
    balances = with_read_sides.read_handlers["balances"]
    audit = with_read_sides.read_handlers["audit"]
    assert isinstance(balances, Balances) and isinstance(audit, PerSide)
    await wait_until(lambda: balances.balances == {"acc-r": 12}, "the balances projection")
    await wait_until(lambda: len(audit.seen) == 2, "both events on the audit read side")
    assert audit.seen == [("audit", "acc-r", 1), ("audit", "acc-r", 2)]
