"""When the clients send a call again: only when the failure proves nothing was written. A stand-in node
(a real gRPC server in this process) injects the failures and counts the calls it received."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf import any_pb2, wrappers_pb2

from chiefofstate.cli.processes import free_port
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import (
    ChiefOfStateServiceServicer,
    add_ChiefOfStateServiceServicer_to_server,
)
from chiefofstate.sdk import (
    CosClient,
    Internal,
    ResourceExhausted,
    RetryPolicy,
    SyncCosClient,
    Unavailable,
)
from chiefofstate.sdk import client_rules as rules

FAST = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
ACCOUNT = bank_pb2.BankAccount(account_id="acc-1", balance=5)


def packed(message: bank_pb2.BankAccount | wrappers_pb2.StringValue) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


@dataclass
class FaultyNode(ChiefOfStateServiceServicer):
    """Answers each rpc with the next injected failure, then with ACCOUNT; counts the calls."""

    failures: list[grpc.StatusCode] = field(default_factory=list)
    calls: int = 0
    headers: list[dict[str, str | bytes]] = field(default_factory=list)
    state: any_pb2.Any = field(default_factory=lambda: packed(ACCOUNT))

    async def _answer(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        self.calls += 1
        self.headers.append(dict(context.invocation_metadata() or ()))
        if self.failures:
            code = self.failures.pop(0)
            await context.abort(code, f"injected {code.name}")

    async def ProcessCommand(  # type: ignore[override]
        self, request: pb.ProcessCommandRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ProcessCommandResponse:
        await self._answer(context)
        return pb.ProcessCommandResponse(
            state=self.state, meta=MetaData(entity_id=request.entity_id, revision_number=1)
        )

    async def GetState(  # type: ignore[override]
        self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetStateResponse:
        await self._answer(context)
        return pb.GetStateResponse(
            state=self.state, meta=MetaData(entity_id=request.entity_id, revision_number=1)
        )


@pytest.fixture
async def faulty() -> AsyncIterator[tuple[FaultyNode, str]]:
    node = FaultyNode()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_ChiefOfStateServiceServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield node, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_full_mailbox_is_retried_for_commands_and_reads(faulty: tuple[FaultyNode, str]) -> None:
    node, target = faulty
    async with CosClient(target, bank_pb2.BankAccount, retry=FAST) as client:
        node.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        state, _ = await client.process("acc-1", bank_pb2.Deposit(amount=1))
        assert state == ACCOUNT and node.calls == 3
        node.failures, node.calls = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED], 0
        found = await client.get("acc-1")
        assert found is not None and node.calls == 3


async def test_retries_stop_at_the_policy_bound(faulty: tuple[FaultyNode, str]) -> None:
    node, target = faulty
    async with CosClient(target, bank_pb2.BankAccount, retry=FAST) as client:
        node.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
        with pytest.raises(ResourceExhausted, match="injected RESOURCE_EXHAUSTED"):
            await client.process("acc-1", bank_pb2.Deposit(amount=1))
        assert node.calls == FAST.attempts


async def test_a_command_that_may_have_been_written_is_not_sent_again(faulty: tuple[FaultyNode, str]) -> None:
    node, target = faulty
    async with CosClient(target, bank_pb2.BankAccount, retry=FAST) as client:
        for code, error in ((grpc.StatusCode.UNAVAILABLE, Unavailable), (grpc.StatusCode.INTERNAL, Internal)):
            node.failures, node.calls = [code], 0
            with pytest.raises(error) as caught:
                await client.process("acc-1", bank_pb2.Deposit(amount=1))
            assert caught.value.code is code
            assert node.calls == 1  # the request reached the node: sending it again could apply it twice


async def test_the_sync_client_follows_the_same_rules(faulty: tuple[FaultyNode, str]) -> None:
    node, target = faulty

    def scenario() -> None:
        with SyncCosClient(target, bank_pb2.BankAccount, retry=FAST, token="t0k") as client:
            node.failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
            client.process(
                "acc-1", bank_pb2.Deposit(amount=1), headers={"x-trace": "abc", "x-raw-bin": b"\x00"}
            )
            assert node.calls == 2
            assert node.headers[-1]["authorization"] == "Bearer t0k"
            assert (node.headers[-1]["x-trace"], node.headers[-1]["x-raw-bin"]) == ("abc", b"\x00")
            node.failures, node.calls = [grpc.StatusCode.UNAVAILABLE], 0
            with pytest.raises(Unavailable):
                client.process("acc-1", bank_pb2.Deposit(amount=1))
            assert node.calls == 1

    # the in-process server runs on this test's event loop, which must keep turning meanwhile
    await asyncio.to_thread(scenario)


async def test_a_node_that_cannot_be_reached_is_retried_then_reported() -> None:
    loop = asyncio.get_running_loop()
    async with CosClient(f"127.0.0.1:{free_port()}", bank_pb2.BankAccount, retry=FAST) as client:
        started = loop.time()
        with pytest.raises(Unavailable, match="failed to connect"):
            await client.process("acc-1", bank_pb2.Deposit(amount=1))
        assert loop.time() - started >= 0.01 + 0.02 * (1 - FAST.jitter)  # two backoffs were waited


async def test_a_state_of_another_type_is_a_type_error(faulty: tuple[FaultyNode, str]) -> None:
    node, target = faulty
    node.state = packed(wrappers_pb2.StringValue(value="x"))
    async with CosClient(target, bank_pb2.BankAccount, retry=FAST) as client:
        with pytest.raises(TypeError, match="google.protobuf.StringValue, not a bank.v1.BankAccount"):
            await client.get("acc-1")


def test_which_failures_prove_nothing_was_written() -> None:
    unreachable = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    )
    assert rules.process_command_may_retry(grpc.StatusCode.UNAVAILABLE, unreachable)
    assert rules.process_command_may_retry(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "entity x has 1000 requests queued"
    )
    assert not rules.process_command_may_retry(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert not rules.process_command_may_retry(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert rules.get_state_may_retry(grpc.StatusCode.UNAVAILABLE)
    assert not rules.get_state_may_retry(grpc.StatusCode.INVALID_ARGUMENT)


def test_backoff_grows_to_its_cap_within_the_jitter() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2, jitter=0.2)
    rng = random.Random(7)
    waits = [policy.backoff_s(retry, rng) for retry in range(1, 8)]
    for retry, wait in enumerate(waits, start=1):
        base = min(1.0, 0.1 * 2 ** (retry - 1))
        assert base * 0.8 <= wait <= base * 1.2
    assert max(waits) <= 1.2
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_headers_must_be_well_formed() -> None:
    with pytest.raises(ValueError, match="-bin"):
        rules.metadata({"x-raw": b"\x00"}, None)
    with pytest.raises(ValueError, match="-bin"):
        rules.metadata({"x-raw-bin": "text"}, None)
    assert rules.metadata({"X-Trace": "a"}, "t") == (("x-trace", "a"), ("authorization", "Bearer t"))
