"""Read-side manager operations in a cluster: carried out where each projection runs, refused with
UNAVAILABLE before anything changes while a projection has no owner, and on the internal port only for
projections the member runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from chiefofstate.cluster.peers import FORWARDED_KEY
from chiefofstate.cluster.readside_routing import ClusterReadSides, HereOnly
from chiefofstate.config.read_sides import DeliverySettings, ReadSideSettings, ReadSidesSettings
from chiefofstate.core.errors import NotFound, Unavailable
from chiefofstate.core.headers import admin_caller
from chiefofstate.core.readside_rules import ProjectionState
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.readside.projection import ProjectionContext
from chiefofstate.readside.runtime import ReadSideRuntime
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from tests.support.readside import ScriptedHandler, eventually

SHARDS = 4
HERE = "10.0.0.1:25520"
THERE = "10.0.0.2:25520"


@dataclass
class PeersStandIn:
    """Records the calls sent on to other members."""

    calls: list[tuple[str, str, bytes, Sequence[tuple[str, str | bytes]]]] = field(default_factory=list)

    async def call(
        self,
        address: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout_s: float,
    ) -> bytes:
        self.calls.append((address, method, request, metadata))
        return b""


@pytest.fixture
async def runtime() -> AsyncIterator[ReadSideRuntime]:
    store = MemoryOffsetStore()
    made = ReadSideRuntime(
        ReadSidesSettings(enabled=True, read_sides=(ReadSideSettings("a", "127.0.0.1", 1),)),
        SHARDS,
        ProjectionContext(
            journal=MemoryJournal(),
            store=store,
            committer=OffsetCommitter(store, 0.01),
            delivery=DeliverySettings(poll_interval_s=10.0, commit_interval_s=0.01),
            slots=asyncio.Semaphore(8),
        ),
        lambda read_side: GuardedReadHandler(read_side, ScriptedHandler(), None),
    )
    await made.prepare(apply_auto_start=False)
    made.run_projection(("a", 0), 1)  # shard 0 runs here
    await eventually(lambda: made.runs("a", 0))
    yield made
    await made.close()


def routed(
    runtime: ReadSideRuntime, owners: dict[tuple[str, int], str]
) -> tuple[ClusterReadSides, PeersStandIn]:
    peers = PeersStandIn()
    operations = ClusterReadSides(runtime, lambda: owners, peers, HERE, 5.0)  # type: ignore[arg-type]
    return operations, peers


async def test_a_projection_running_elsewhere_is_paused_by_its_member(runtime: ReadSideRuntime) -> None:
    operations, peers = routed(runtime, {("a", 0): HERE, ("a", 1): THERE})
    await operations.pause("a", 1)
    ((address, method, request, metadata),) = peers.calls
    assert address == THERE and method.endswith("/PauseReadSideByShard")
    assert mpb.PauseReadSideByShardRequest.FromString(request).cluster_shard_number == 1
    assert (FORWARDED_KEY, "1") in metadata
    await operations.pause("a", 0)  # runs here: no call sent
    assert len(peers.calls) == 1
    assert runtime.states("a") == {0: ProjectionState.PAUSED}


async def test_an_operation_on_a_projection_without_owner_changes_nothing(runtime: ReadSideRuntime) -> None:
    operations, peers = routed(runtime, {("a", 0): HERE, ("a", 1): THERE, ("a", 2): THERE})
    with pytest.raises(Unavailable, match="shard 3 has no member running it"):
        await operations.pause("a")  # shard 3 is unowned: refused before any shard is paused
    assert peers.calls == []
    assert runtime.states("a") == {0: ProjectionState.RUNNING}
    with pytest.raises(NotFound):
        await operations.resume("nope")


async def test_listing_names_the_member_of_every_projection(runtime: ReadSideRuntime) -> None:
    operations, _ = routed(runtime, {("a", 0): HERE, ("a", 1): THERE})
    (view,) = await operations.views("a")
    assert [(shard.member, shard.state) for shard in view.shards] == [
        (HERE, ProjectionState.RUNNING),
        (THERE, ProjectionState.RUNNING),
        ("", ProjectionState.UNASSIGNED),
        ("", ProjectionState.UNASSIGNED),
    ]


async def test_the_internal_port_acts_only_on_projections_this_member_runs(runtime: ReadSideRuntime) -> None:
    here_only = HereOnly(runtime)
    with pytest.raises(Unavailable, match="not run by this member"):
        await here_only.pause("a", 1)
    await here_only.pause("a", 0)
    assert runtime.states("a") == {0: ProjectionState.PAUSED}


async def test_an_operation_sent_on_carries_the_callers_credentials(runtime: ReadSideRuntime) -> None:
    operations, peers = routed(runtime, {("a", 0): HERE, ("a", 1): THERE})
    # The manager's rpc puts its caller's metadata here; the member running the projection checks the
    # token again on its internal port, so it must go along.
    admin_caller.set((("authorization", "Bearer admin-token"), ("user-agent", "grpc-python")))
    await operations.resume("a", 1)
    ((_, _, _, metadata),) = peers.calls
    assert ("authorization", "Bearer admin-token") in metadata and (FORWARDED_KEY, "1") in metadata
    assert all(key != "user-agent" for key, _ in metadata)  # hop headers are the channel's own
