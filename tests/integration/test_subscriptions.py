"""Live subscriptions end to end: a real `cos serve`, real streaming gRPC clients (docs/contract.md §7,
D8)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration

# Subscriptions sit above the journal: one store is enough for all but the first test.
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)

OFF_MESSAGE = "Subscription is not enabled; configure subscription to use streaming"
Stream = aio.UnaryStreamCall[object, object]


def stub(channel: aio.Channel) -> ChiefOfStateServiceStub:
    return ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def subscribing_node(node_factory: NodeFactory) -> Process:
    return node_factory(COS_SUBSCRIPTION_ENABLED="true")


@pytest.fixture
async def cos(subscribing_node: Process) -> AsyncIterator[ChiefOfStateServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{subscribing_node.ports['grpc']}") as channel:
        yield stub(channel)


async def process(cos: ChiefOfStateServiceStub, entity: str, command: object) -> pb.ProcessCommandResponse:
    reply: pb.ProcessCommandResponse = await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id=entity, command=command), timeout=10
    )
    return reply


async def registered(call: Stream) -> str:
    """The subscription id from the stream's initial metadata, sent once it is registered."""
    metadata = dict(await asyncio.wait_for(call.initial_metadata(), 10) or ())
    return str(metadata["subscription-id"])


async def read(call: Stream, count: int) -> list[pb.SubscribeAllResponse]:
    async with asyncio.timeout(20):
        return [await call.read() for _ in range(count)]


async def rejected(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def stream_error(call: Stream) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        async with asyncio.timeout(20):
            async for _ in call:
                pass
    return caught.value


async def test_an_entity_subscription_streams_each_committed_event_in_order_then_unsubscribe_ends_it(
    cos: ChiefOfStateServiceStub,
) -> None:
    call = cos.Subscribe(pb.SubscribeRequest(entity_id="acc-1"))
    subscription_id = await registered(call)
    assert uuid.UUID(subscription_id).version == 4

    opened = await process(cos, "acc-1", bank.open_account("Ann", 1000))
    await process(cos, "other", bank.open_account("Oz", 1))  # another entity: not streamed
    await process(cos, "acc-1", bank.get_balance())  # a no-op: nothing is streamed
    with pytest.raises(aio.AioRpcError):
        await process(cos, "acc-1", bank.withdraw(10_000))  # refused: nothing is streamed
    transfer = await process(cos, "acc-1", bank.transfer_out(100, 5, "acc-2"))

    messages = await read(call, 3)
    assert [m.subscription_id for m in messages] == [subscription_id] * 3
    assert [m.meta.revision_number for m in messages] == [1, 2, 3]
    assert [m.event.type_url.rsplit(".", 1)[-1] for m in messages] == [
        "AccountOpened",
        "MoneyWithdrawn",
        "FeeCharged",
    ]
    assert messages[0].resulting_state == opened.state and messages[0].meta == opened.meta
    assert messages[2].resulting_state == transfer.state and messages[2].meta == transfer.meta

    reply = await cos.Unsubscribe(pb.UnsubscribeRequest(subscription_id=subscription_id), timeout=10)
    assert reply.subscription_id == subscription_id
    assert await asyncio.wait_for(call.read(), 10) is aio.EOF  # completed, decision D8
    assert await call.code() == grpc.StatusCode.OK


@sqlite_only
async def test_subscribe_all_keeps_per_entity_order_under_concurrent_load(
    cos: ChiefOfStateServiceStub,
) -> None:
    call = cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="everything"))
    assert await registered(call) == "everything"
    entities, deposits = 12, 15

    async def account_history(index: int) -> None:
        await process(cos, f"load-{index}", bank.open_account("L", 0))
        for _ in range(deposits):
            await process(cos, f"load-{index}", bank.deposit(1))

    await asyncio.gather(*(account_history(i) for i in range(entities)))
    seen: defaultdict[str, list[int]] = defaultdict(list)
    for message in await read(call, entities * (deposits + 1)):
        assert message.subscription_id == "everything"
        seen[message.meta.entity_id].append(message.meta.revision_number)
    assert seen == {f"load-{i}": list(range(1, deposits + 2)) for i in range(entities)}

    reply = await cos.UnsubscribeAll(pb.UnsubscribeAllRequest(subscription_id="everything"), timeout=10)
    assert reply.subscription_id == "everything"
    assert await asyncio.wait_for(call.read(), 10) is aio.EOF


@sqlite_only
async def test_many_subscribers_of_one_entity_and_of_all_entities_each_get_every_event_in_order(
    cos: ChiefOfStateServiceStub,
) -> None:
    """Fan-out: every stream is read to the end, not a sample of them."""
    of_shared = [cos.Subscribe(pb.SubscribeRequest(entity_id="shared")) for _ in range(24)]
    of_all = [cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id=f"all-{n}")) for n in range(24)]
    streams = of_shared + of_all
    ids = await asyncio.gather(*(registered(call) for call in streams))
    assert len(set(ids)) == len(streams)
    deposits = 10

    async def history(entity: str) -> None:
        await process(cos, entity, bank.open_account("F", 0))
        for _ in range(deposits):
            await process(cos, entity, bank.deposit(1))

    await asyncio.gather(history("shared"), history("other"))
    expected = list(range(1, deposits + 2))
    for call, subscription_id in zip(of_shared, ids, strict=False):
        messages = await read(call, len(expected))
        assert [(m.subscription_id, m.meta.entity_id) for m in messages] == [
            (subscription_id, "shared")
        ] * len(expected)
        assert [m.meta.revision_number for m in messages] == expected
    for call in of_all:
        seen: defaultdict[str, list[int]] = defaultdict(list)
        for message in await read(call, 2 * len(expected)):
            seen[message.meta.entity_id].append(message.meta.revision_number)
        assert seen == {"shared": expected, "other": expected}
    for call in streams:
        call.cancel()


@sqlite_only
async def test_bad_subscription_requests_and_reused_ids(cos: ChiefOfStateServiceStub) -> None:
    no_entity = await stream_error(cos.Subscribe(pb.SubscribeRequest(subscription_id="x")))
    assert (
        no_entity.code() == grpc.StatusCode.INVALID_ARGUMENT
        and no_entity.details() == "entity_id is required"
    )
    for rpc, request in (
        (cos.Unsubscribe, pb.UnsubscribeRequest()),
        (cos.UnsubscribeAll, pb.UnsubscribeAllRequest()),
    ):
        error = await rejected(rpc(request, timeout=10))
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and error.details() == "subscription_id is required"
        )
    # an unknown id is not an error (docs/contract.md §7): the reply echoes it
    unknown = await cos.Unsubscribe(pb.UnsubscribeRequest(subscription_id="never-was"), timeout=10)
    assert unknown.subscription_id == "never-was"

    first = cos.Subscribe(pb.SubscribeRequest(entity_id="r-1", subscription_id="mine"))
    await registered(first)
    reused = await stream_error(cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="mine")))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS and "mine" in (reused.details() or "")
    # UnsubscribeAll ends an entity subscription too; the id can then be used again
    await cos.UnsubscribeAll(pb.UnsubscribeAllRequest(subscription_id="mine"), timeout=10)
    assert await asyncio.wait_for(first.read(), 10) is aio.EOF
    again = cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="mine"))
    assert await registered(again) == "mine"
    again.cancel()


@sqlite_only
async def test_subscriptions_are_unimplemented_when_switched_off(node_factory: NodeFactory) -> None:
    node = node_factory()
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        for call in (
            cos.Subscribe(pb.SubscribeRequest(entity_id="a")),
            cos.SubscribeAll(pb.SubscribeAllRequest()),
        ):
            error = await stream_error(call)
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED and error.details() == OFF_MESSAGE
        for rpc, request in (
            (cos.Unsubscribe, pb.UnsubscribeRequest(subscription_id="a")),
            (cos.UnsubscribeAll, pb.UnsubscribeAllRequest(subscription_id="a")),
        ):
            error = await rejected(rpc(request, timeout=10))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED and error.details() == OFF_MESSAGE


async def timed_commands(cos: ChiefOfStateServiceStub, prefix: str, count: int, concurrency: int) -> float:
    """Commands per second for `count` deposits spread over `concurrency` accounts."""
    await asyncio.gather(
        *(process(cos, f"{prefix}-{i}", bank.open_account("F", 0)) for i in range(concurrency))
    )

    async def worker(index: int) -> None:
        for _ in range(count // concurrency):
            await process(cos, f"{prefix}-{index}", bank.deposit(1))

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return (count // concurrency) * concurrency / (time.perf_counter() - started)


@sqlite_only
async def test_a_subscriber_that_never_reads_is_ended_while_commands_keep_full_speed(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(COS_SUBSCRIPTION_ENABLED="true", COS_SUBSCRIPTION_BUFFER_SIZE="20")
    target = f"127.0.0.1:{node.ports['grpc']}"
    # Without BDP probing the client's HTTP/2 window stays at 64 KB, so a stream nobody reads
    # fills up after a few hundred events instead of megabytes.
    async with (
        aio.insecure_channel(target) as channel,
        aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as stalled_channel,
    ):
        cos = stub(channel)
        baseline = await timed_commands(cos, "warm", 800, 16)
        reader = cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="reader"))
        await registered(reader)

        async def drain() -> int:
            received = 0
            async for _ in reader:
                received += 1
            return received

        draining = asyncio.create_task(drain())
        stalled = stub(stalled_channel).SubscribeAll(pb.SubscribeAllRequest(subscription_id="stalled"))
        await registered(stalled)
        with_stalled = await timed_commands(cos, "busy", 800, 16)
        # Commands never wait for a subscriber; a ratio within the run, generous for a shared 2-core
        # machine (a command path that waited on the stalled stream would stop after ~20 events).
        assert with_stalled >= 0.3 * baseline, (baseline, with_stalled)

        received = 0
        with pytest.raises(aio.AioRpcError) as ended:
            async with asyncio.timeout(20):
                async for _ in stalled:
                    received += 1
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscription stalled fell behind" in (ended.value.details() or "")
        assert 0 < received < 816  # it got what was in flight, then the end

        # the reading subscriber, meanwhile, got every event
        await cos.Unsubscribe(pb.UnsubscribeRequest(subscription_id="reader"), timeout=10)
        assert await asyncio.wait_for(draining, 20) == 816
    assert "subscription stalled fell behind" in node.log_text()


@sqlite_only
async def test_a_subscriber_whose_writes_stay_blocked_is_ended_by_the_write_timeout(
    node_factory: NodeFactory,
) -> None:
    # A buffer far larger than the run: only the write timeout can end the stalled subscriber.
    node = node_factory(
        COS_SUBSCRIPTION_ENABLED="true",
        COS_SUBSCRIPTION_BUFFER_SIZE="100000",
        COS_SUBSCRIPTION_WRITE_TIMEOUT="1s",
    )
    target = f"127.0.0.1:{node.ports['grpc']}"
    async with (
        aio.insecure_channel(target) as channel,
        aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as stalled_channel,
    ):
        cos = stub(channel)
        reader = cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="reader"))
        await registered(reader)
        received_by_reader = 0

        async def drain() -> None:
            nonlocal received_by_reader
            async for _ in reader:
                received_by_reader += 1

        draining = asyncio.create_task(drain())
        stalled = stub(stalled_channel).SubscribeAll(pb.SubscribeAllRequest(subscription_id="stalled"))
        await registered(stalled)
        sent = 0
        deadline = time.monotonic() + 60
        # Enough events to fill the stalled client's 64 KB window, then until the node gives up on it.
        while "subscription stalled fell behind" not in node.log_text():
            assert time.monotonic() < deadline, "the stalled subscriber was never ended"
            await timed_commands(cos, f"w{sent}", 160, 16)
            sent += 16 + 160  # the accounts' openings, then the deposits

        with pytest.raises(aio.AioRpcError) as ended:
            async with asyncio.timeout(20):
                async for _ in stalled:
                    pass
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "COS_SUBSCRIPTION_WRITE_TIMEOUT" in (ended.value.details() or "")

        # The reading subscriber kept receiving every event, during and after.
        await process(cos, "after", bank.open_account("After", 1))
        for _ in range(400):  # at most 20 s
            if received_by_reader == sent + 1:
                break
            await asyncio.sleep(0.05)
        await cos.Unsubscribe(pb.UnsubscribeRequest(subscription_id="reader"), timeout=10)
        await asyncio.wait_for(draining, 20)
        assert received_by_reader == sent + 1


@sqlite_only
async def test_the_number_of_subscriptions_is_bounded(node_factory: NodeFactory) -> None:
    node = node_factory(COS_SUBSCRIPTION_ENABLED="true", COS_SUBSCRIPTION_MAX="2")
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = stub(channel)
        first = cos.SubscribeAll(pb.SubscribeAllRequest())
        second = cos.Subscribe(pb.SubscribeRequest(entity_id="a"))
        await asyncio.gather(registered(first), registered(second))
        third = await stream_error(cos.SubscribeAll(pb.SubscribeAllRequest()))
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "COS_SUBSCRIPTION_MAX" in (
            third.details() or ""
        )
        first.cancel()  # a client that goes away frees its place at once
        async with asyncio.timeout(10):
            while True:
                retry = cos.SubscribeAll(pb.SubscribeAllRequest())
                try:
                    await registered(retry)
                    break
                except aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
        retry.cancel()
        second.cancel()


@sqlite_only
async def test_stopping_the_node_ends_open_subscriptions_promptly(node_factory: NodeFactory) -> None:
    node = node_factory(COS_SUBSCRIPTION_ENABLED="true")
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        call = stub(channel).SubscribeAll(pb.SubscribeAllRequest())
        await registered(call)
        started = time.monotonic()
        exit_code = await asyncio.to_thread(node.stop)
        assert exit_code == 0 and time.monotonic() - started < 10  # not the 20 s grace period
        ended = await stream_error(call)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE
