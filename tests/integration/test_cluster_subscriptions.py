"""Subscriptions across a cluster (docs/cluster.md "Subscriptions", docs/contract.md §7): two real `cos`
members on one PostgreSQL database; a subscriber on one member sees what every member commits, and an
Unsubscribe sent to either member ends the stream wherever it is held."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env, postgres_store_env
from tests.support.cluster_status import entities_owned_by_each, settled
from tests.support.postgres import PgServer

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0
DEPOSITS = 6
Stream = aio.UnaryStreamCall[object, object]


@pytest.fixture
def two_members(tmp_path: Path, pg_database: tuple[PgServer, str]) -> Iterator[tuple[Node, Node]]:
    server, database = pg_database
    store_env = postgres_store_env(server.host, server.port, server.user, server.password, database)
    with BankHandler(tmp_path / "logs") as handler:
        base = node_base_env(handler.port, os.environ, COS_SUBSCRIPTION_ENABLED="true")
        with Cluster(base, store_env, tmp_path / "logs") as cluster:
            yield cluster.add_node(), cluster.add_node()


def stub(channel: aio.Channel) -> ChiefOfStateServiceStub:
    return ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


async def registered(call: Stream) -> str:
    metadata = dict(await asyncio.wait_for(call.initial_metadata(), 20) or ())
    return str(metadata["subscription-id"])


async def test_a_subscriber_on_one_member_receives_what_another_member_commits_in_order(
    two_members: tuple[Node, Node],
) -> None:
    first, second = two_members
    owners = entities_owned_by_each(await settled(first), two_members)
    async with (
        aio.insecure_channel(first.target) as to_first,
        aio.insecure_channel(second.target) as to_second,
    ):
        everything = stub(to_first).SubscribeAll(pb.SubscribeAllRequest(subscription_id="all-on-first"))
        assert await registered(everything) == "all-on-first"
        watched = next(entity for entity, owner in owners.items() if owner == second.name)
        one = stub(to_first).Subscribe(pb.SubscribeRequest(entity_id=watched, subscription_id="one-on-first"))
        await registered(one)

        async def history(entity: str) -> None:
            # Every command goes to the second member, whichever owns the entity.
            cos = stub(to_second)
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity, command=bank.open_account("A", 0)), timeout=20
            )
            for _ in range(DEPOSITS):
                await cos.ProcessCommand(
                    pb.ProcessCommandRequest(entity_id=entity, command=bank.deposit(1)), timeout=20
                )

        await asyncio.gather(*(history(entity) for entity in owners))
        seen: defaultdict[str, list[int]] = defaultdict(list)
        async with asyncio.timeout(30):
            while sum(map(len, seen.values())) < len(owners) * (DEPOSITS + 1):
                message = await everything.read()
                assert message is not aio.EOF
                assert isinstance(message, pb.SubscribeAllResponse)
                seen[message.meta.entity_id].append(message.meta.revision_number)
            watched_revisions = [(await one.read()).meta.revision_number for _ in range(DEPOSITS + 1)]
        assert dict(seen) == {entity: list(range(1, DEPOSITS + 2)) for entity in owners}
        assert watched_revisions == list(range(1, DEPOSITS + 2))
        everything.cancel()
        one.cancel()


async def test_an_unsubscribe_sent_to_another_member_ends_the_stream(two_members: tuple[Node, Node]) -> None:
    first, second = two_members
    await settled(first)
    async with (
        aio.insecure_channel(first.target) as to_first,
        aio.insecure_channel(second.target) as to_second,
    ):
        held_on_first = stub(to_first).SubscribeAll(pb.SubscribeAllRequest(subscription_id="held-on-first"))
        await registered(held_on_first)
        reply = await stub(to_second).Unsubscribe(
            pb.UnsubscribeRequest(subscription_id="held-on-first"), timeout=20
        )
        assert reply.subscription_id == "held-on-first"
        assert await asyncio.wait_for(held_on_first.read(), 20) is aio.EOF
        assert await held_on_first.code() == grpc.StatusCode.OK
        # The id is free again on the first member once its stream ended.
        again = stub(to_first).SubscribeAll(pb.SubscribeAllRequest(subscription_id="held-on-first"))
        assert await registered(again) == "held-on-first"
        again.cancel()


async def test_an_unsubscribe_carries_the_callers_token_to_the_member_holding_the_stream(
    tmp_path: Path, pg_database: tuple[PgServer, str]
) -> None:
    server, database = pg_database
    tokens = tmp_path / "tokens"
    tokens.write_text("client-secret client\n")
    store_env = postgres_store_env(server.host, server.port, server.user, server.password, database)
    with BankHandler(tmp_path / "logs") as handler:
        base = node_base_env(
            handler.port, os.environ, COS_SUBSCRIPTION_ENABLED="true", COS_AUTH_TOKENS_FILE=str(tokens)
        )
        with Cluster(base, store_env, tmp_path / "logs") as cluster:
            first, second = cluster.add_node(), cluster.add_node()
            await settled(first)
            credentials = (("authorization", "Bearer client-secret"),)
            async with (
                aio.insecure_channel(first.target) as to_first,
                aio.insecure_channel(second.target) as to_second,
            ):
                held = stub(to_first).SubscribeAll(
                    pb.SubscribeAllRequest(subscription_id="tokened"), metadata=credentials
                )
                await registered(held)
                await stub(to_second).Unsubscribe(
                    pb.UnsubscribeRequest(subscription_id="tokened"), metadata=credentials, timeout=20
                )
                # The first member checked the same token on its internal port and ended the stream.
                assert await asyncio.wait_for(held.read(), 20) is aio.EOF
                assert await held.code() == grpc.StatusCode.OK


async def test_a_member_without_subscribers_reads_no_events_from_the_journal(
    two_members: tuple[Node, Node],
) -> None:
    first, second = two_members
    owners = entities_owned_by_each(await settled(first), two_members)

    async def write_to_all(cos: ChiefOfStateServiceStub, name: str) -> None:
        for entity in owners:
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=f"{name}-{entity}", command=bank.open_account("A", 0)),
                timeout=20,
            )

    async def feed_reads(node: Node) -> float:
        value = await asyncio.to_thread(node.metric, "cos_subscription_feed_reads_total")
        assert value is not None
        return value

    async with (
        aio.insecure_channel(second.target) as to_second,
        aio.insecure_channel(first.target) as to_first,
    ):
        await write_to_all(stub(to_second), "quiet")  # commits on both members' shards, every NOTIFY sent
        await asyncio.sleep(1.0)
        assert (await feed_reads(first), await feed_reads(second)) == (0.0, 0.0)

        watcher = stub(to_first).SubscribeAll(pb.SubscribeAllRequest(subscription_id="watcher"))
        await registered(watcher)
        await write_to_all(stub(to_second), "heard")
        async with asyncio.timeout(30):
            heard = set()
            while len(heard) < len(owners):
                message = await watcher.read()
                assert isinstance(message, pb.SubscribeAllResponse)
                assert message.meta.entity_id.startswith("heard-")  # nothing from before it subscribed
                heard.add(message.meta.entity_id)
        assert await feed_reads(first) > 0
        assert await feed_reads(second) == 0.0  # still no subscriber there

        watcher.cancel()  # the last subscriber leaves: the feed stops reading
        async with asyncio.timeout(30):
            for _ in range(300):  # until its stream is released (the feed pauses as it is)
                if await asyncio.to_thread(first.metric, "cos_subscriptions") == 0.0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the cancelled subscription's stream was never released")
        before = await feed_reads(first)
        await write_to_all(stub(to_second), "after")
        await asyncio.sleep(1.0)
        assert await feed_reads(first) == before
