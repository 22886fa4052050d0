"""Thousands of subscriptions opened and dropped leave nothing behind (docs/contract.md §7, decision D8).

The node runs in this test's event loop (chiefofstate.Node), so the test can read the hub's counts
and the loop's task count directly; the clients are real gRPC streams over TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from chiefofstate_examples.bank.handlers import Bank
from grpc import aio

from chiefofstate import Node, load_settings
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.sdk import start
from chiefofstate.subscription.hub import SubscriptionHub

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Stream = aio.UnaryStreamCall[object, object]
ROUND = 1000


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    handler = await start(Bank())
    settings = load_settings(
        {
            "COS_WRITE_SIDE_HOST": "127.0.0.1",
            "COS_WRITE_SIDE_PORT": str(handler.port),
            "COS_ADDRESS": "127.0.0.1",
            "COS_PORT": "0",
            "COS_MANAGEMENT_PORT": "0",
            "COS_DB_PATH": str(tmp_path / "cos.db"),
            "COS_SUBSCRIPTION_ENABLED": "true",
        }
    )
    node = Node(settings)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        await handler.stop()


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
    """Poll with a deadline: the counts change as grpc finishes its handlers, with nothing to await."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true after {timeout_s}s: {what}")


async def drained(call: Stream) -> grpc.StatusCode:
    while await call.read() is not aio.EOF:
        pass
    return await call.code()


async def open_round(cos: ChiefOfStateServiceStub, prefix: str) -> list[Stream]:
    calls: list[Stream] = [
        cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id=f"{prefix}-{i}"))
        if i % 2
        else cos.Subscribe(pb.SubscribeRequest(entity_id="hot", subscription_id=f"{prefix}-{i}"))
        for i in range(ROUND)
    ]
    await asyncio.wait_for(asyncio.gather(*(call.initial_metadata() for call in calls)), 30)
    return calls


async def test_thousands_of_subscriptions_opened_and_dropped_leave_nothing_behind(node: Node) -> None:
    hub = node.subscriptions
    assert isinstance(hub, SubscriptionHub) and node.grpc is not None
    async with aio.insecure_channel(f"127.0.0.1:{node.grpc.port}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        opening = pb.ProcessCommandRequest(entity_id="hot", command=bank.open_account("H", 0))
        await cos.ProcessCommand(opening, timeout=10)
        warm_up = cos.SubscribeAll(pb.SubscribeAllRequest())
        await asyncio.wait_for(warm_up.initial_metadata(), 10)
        warm_up.cancel()
        await eventually(lambda: hub.open_streams == 0, "the warm-up subscription is released")
        await asyncio.sleep(0.2)
        baseline = len(asyncio.all_tasks())

        for ending in ("client cancels", "unsubscribe", "channel closes"):
            calls = await open_round(cos, ending.replace(" ", "-"))
            assert hub.open_streams == ROUND and hub.live == ROUND
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="hot", command=bank.deposit(1)), timeout=10
            )
            for call in (calls[0], calls[1], calls[-1]):  # both kinds receive the event
                message = await asyncio.wait_for(call.read(), 10)
                assert message.meta.entity_id == "hot"  # type: ignore[attr-defined]

            if ending == "client cancels":
                for call in calls:
                    call.cancel()
            elif ending == "unsubscribe":
                await asyncio.gather(
                    *(
                        cos.Unsubscribe(pb.UnsubscribeRequest(subscription_id=f"unsubscribe-{i}"), timeout=10)
                        for i in range(ROUND)
                    )
                )
                # grpc reports a stream's status only once its unread messages are consumed
                codes = await asyncio.wait_for(asyncio.gather(*(drained(call) for call in calls)), 30)
                assert set(codes) == {grpc.StatusCode.OK}  # completed, decision D8
            else:
                await channel.close()

            await eventually(
                lambda: hub.open_streams == 0 and hub.live == 0, f"{ending}: every stream released"
            )
            await eventually(
                lambda: len(asyncio.all_tasks()) <= baseline,
                f"{ending}: the task count returns to its baseline of {baseline}",
            )
