"""CosClient and SyncCosClient against a real `cos serve` node (SQLite) in front of the SDK bank handler:
typed states, typed errors with rich details, subscriptions, and TLS with a bearer token."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from chiefofstate.cli.processes import Process, start_bank_write_handler, start_node_on_free_ports
from chiefofstate.sdk import (
    AlreadyExists,
    CosClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Subscription,
    SyncCosClient,
    Tls,
    Unauthenticated,
)
from tests.integration.conftest import base_env
from tests.support.certificates import CertificateAuthority

pytestmark = pytest.mark.integration
DEADLINE_S = 60.0


@pytest.fixture
def sdk_handler(tmp_path: Path) -> Iterator[Process]:
    handler = start_bank_write_handler(tmp_path / "logs")
    yield handler
    handler.stop()


def start_node(tmp_path: Path, handler: Process, **extra: str) -> Process:
    env = {
        **base_env(handler.ports["write_side"]),
        "COS_DB_PATH": str(tmp_path / "cos.db"),
        "COS_SUBSCRIPTION_ENABLED": "true",
        **extra,
    }
    return start_node_on_free_ports(env, tmp_path / "logs", name="cos-node")


@pytest.fixture
def node(tmp_path: Path, sdk_handler: Process) -> Iterator[Process]:
    process = start_node(tmp_path, sdk_handler)
    yield process
    process.stop()


async def test_process_and_get_return_typed_states(node: Process) -> None:
    async with CosClient(f"127.0.0.1:{node.ports['grpc']}", bank_pb2.BankAccount) as bank:
        assert await bank.get("acc-1") is None
        state, meta = await bank.process("acc-1", bank_pb2.OpenAccount(owner="Ada", initial_balance=100))
        assert isinstance(state, bank_pb2.BankAccount)
        assert (state.owner, state.balance, meta.revision_number, meta.entity_id) == ("Ada", 100, 1, "acc-1")
        state, meta = await bank.process("acc-1", bank_pb2.Deposit(amount=5), headers={"x-request-id": "r-1"})
        assert (state.balance, meta.revision_number) == (105, 2)
        found = await bank.get("acc-1")
        assert found is not None and found[0].balance == 105 and found[1].revision_number == 2


async def test_failures_are_typed_and_keep_their_details(node: Process) -> None:
    async with CosClient(f"127.0.0.1:{node.ports['grpc']}", bank_pb2.BankAccount) as bank:
        await bank.process("acc-2", bank_pb2.OpenAccount(owner="Bob", initial_balance=10))
        with pytest.raises(FailedPrecondition) as refused:
            await bank.process("acc-2", bank_pb2.Withdraw(amount=50))
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        info = refused.value.detail(error_details_pb2.ErrorInfo)
        assert info is not None and dict(info.metadata) == {"balance": "10", "requested": "50"}
        with pytest.raises(AlreadyExists):
            await bank.process("acc-2", bank_pb2.OpenAccount(owner="Bob"))
        with pytest.raises(NotFound):
            await bank.process("nobody", bank_pb2.Deposit(amount=1))
        with pytest.raises(InvalidArgument, match="unknown command type google.protobuf.StringValue"):
            await bank.process("acc-2", wrappers_pb2.StringValue(value="not a bank command"))
        with pytest.raises(ValueError, match="entity_id is required"):
            await bank.process("", bank_pb2.Deposit(amount=1))


async def first(subscription: Subscription[bank_pb2.BankAccount], count: int) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    async for update in subscription:
        seen.append((update.meta.entity_id, update.state.balance))
        if len(seen) == count:
            break
    return seen


async def test_subscriptions_stream_committed_events_with_typed_states(node: Process) -> None:
    async with (
        CosClient(f"127.0.0.1:{node.ports['grpc']}", bank_pb2.BankAccount) as bank,
        bank.subscribe("acc-3") as one,
        bank.subscribe_all() as every,
    ):
        await bank.process("acc-3", bank_pb2.OpenAccount(owner="Cy", initial_balance=1))
        await bank.process("acc-4", bank_pb2.OpenAccount(owner="Di", initial_balance=2))
        await bank.process("acc-3", bank_pb2.Deposit(amount=9))
        assert await asyncio.wait_for(first(one, 2), DEADLINE_S) == [("acc-3", 1), ("acc-3", 10)]
        everything = await asyncio.wait_for(first(every, 3), DEADLINE_S)
        assert sorted(everything) == [("acc-3", 1), ("acc-3", 10), ("acc-4", 2)]


async def test_an_update_unpacks_its_event(node: Process) -> None:
    async with CosClient(f"127.0.0.1:{node.ports['grpc']}", bank_pb2.BankAccount) as bank:
        async with bank.subscribe("acc-5") as updates:
            await bank.process("acc-5", bank_pb2.OpenAccount(owner="Ed", initial_balance=3))
            update = await asyncio.wait_for(anext(aiter(updates)), DEADLINE_S)
        opened = update.event_as(bank_pb2.AccountOpened)
        assert opened is not None and opened.owner == "Ed"
        assert update.event_as(bank_pb2.MoneyDeposited) is None


def test_the_sync_client_does_the_same_without_an_event_loop(node: Process) -> None:
    with SyncCosClient(f"127.0.0.1:{node.ports['grpc']}", bank_pb2.BankAccount) as bank:
        assert bank.get("acc-6") is None
        state, meta = bank.process("acc-6", bank_pb2.OpenAccount(owner="Flo", initial_balance=7))
        assert (state.balance, meta.revision_number) == (7, 1)
        with pytest.raises(FailedPrecondition):
            bank.process("acc-6", bank_pb2.Withdraw(amount=8))
        found = bank.get("acc-6")
        assert found is not None and found[0].owner == "Flo"
        with bank.subscribe("acc-6") as one, bank.subscribe_all() as every:
            bank.process("acc-6", bank_pb2.Deposit(amount=3))
            update = next(iter(one))
            assert (update.state.balance, update.meta.revision_number) == (10, 2)
            assert update.event_as(bank_pb2.MoneyDeposited) == bank_pb2.MoneyDeposited(amount=3)
            assert next(iter(every)).meta.entity_id == "acc-6"


async def test_tls_and_a_bearer_token(tmp_path: Path, sdk_handler: Process) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("node")
    client_certificate = ca.issue("client")
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret client\n")
    node = start_node(
        tmp_path,
        sdk_handler,
        COS_TLS_CERT_FILE=str(server.cert_file),
        COS_TLS_KEY_FILE=str(server.key_file),
        COS_TLS_CLIENT_CA_FILE=str(ca.cert_file),
        COS_AUTH_TOKENS_FILE=str(tokens),
    )
    try:
        target = f"127.0.0.1:{node.ports['grpc']}"
        tls = Tls(
            ca_file=ca.cert_file, cert_file=client_certificate.cert_file, key_file=client_certificate.key_file
        )
        async with CosClient(target, bank_pb2.BankAccount, tls=tls, token="s3cret") as bank:
            state, _ = await bank.process("acc-7", bank_pb2.OpenAccount(owner="Gus", initial_balance=4))
            assert state.balance == 4
        async with CosClient(target, bank_pb2.BankAccount, tls=tls, token="wrong") as stranger:
            with pytest.raises(Unauthenticated):
                await stranger.get("acc-7")
        with SyncCosClient(target, bank_pb2.BankAccount, tls=tls, token="s3cret") as blocking:
            found = blocking.get("acc-7")
            assert found is not None and found[0].balance == 4
    finally:
        node.stop()
