"""The entity host in a cluster member: it serves only the shards its gate admits, and never answers
from state cached under an earlier lease of the shard (entities/gate.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from chiefofstate.core.errors import ShardNotHere
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.journal import AppendRequest
from tests.unit.entities.test_entity_host import Rig, build_rig, packed_int, unpacked_int


@dataclass
class LeasedShards:
    """A gate driven by the test: shard → token of the lease this node holds."""

    tokens: dict[int, int] = field(default_factory=dict)

    def admit(self, shard: int) -> int | None:
        token = self.tokens.get(shard)
        if token is None:
            raise ShardNotHere(shard)
        return token

    def serves(self, shard: int, tenure: int | None) -> bool:
        return tenure is not None and self.tokens.get(shard) == tenure


@pytest.fixture
def gate() -> LeasedShards:
    return LeasedShards()


@pytest.fixture
async def rig(gate: LeasedShards) -> AsyncIterator[Rig]:
    async for built in build_rig(gate=gate):
        yield built


def shard(entity_id: str) -> int:
    return shard_of(entity_id, 16)


async def test_a_shard_the_gate_refuses_runs_no_handler_and_writes_nothing(
    rig: Rig, gate: LeasedShards
) -> None:
    with pytest.raises(ShardNotHere) as refused:
        await rig.command("elsewhere", 1)
    assert refused.value.shard == shard("elsewhere")
    with pytest.raises(ShardNotHere):
        await rig.host.get_state("elsewhere", rig.deadline())
    assert rig.handler.command_calls == 0
    assert await rig.journal.read_events("elsewhere") == []


async def test_state_cached_under_an_earlier_lease_is_read_again(rig: Rig, gate: LeasedShards) -> None:
    gate.tokens[shard("moving")] = 1
    assert await rig.command("moving", 2) == 2
    assert rig.host.resting_state("moving") is not None
    # The shard went to another node, which wrote revision 3, and came back under a new token.
    gate.tokens[shard("moving")] = 2
    elsewhere = EventWrapper(
        event=packed_int(10),
        resulting_state=packed_int(12),
        meta=MetaData(entity_id="moving", revision_number=3),
    )
    other_node = AppendRequest("moving", shard("moving"), 2, [elsewhere.SerializeToString()], 0, "other-node")
    assert await rig.journal.append_batch([other_node]) == [None]
    assert rig.host.resting_state("moving") is None  # the cache is not trusted under the new tenure
    # The next command starts from revision 3 as stored, not from the cached revision 2.
    assert await rig.command("moving", 1) == 4
    state = await rig.host.get_state("moving", rig.deadline())
    assert unpacked_int(state.decode().state) == 13


async def test_a_cached_entity_is_answered_from_the_cache_only_under_the_same_lease(
    rig: Rig, gate: LeasedShards
) -> None:
    gate.tokens[shard("kept")] = 7
    assert await rig.command("kept", 1) == 1
    assert rig.host.resting_state("kept") is not None
    del gate.tokens[shard("kept")]  # the lease lapsed
    assert rig.host.resting_state("kept") is None
    with pytest.raises(ShardNotHere):
        await rig.host.get_state("kept", rig.deadline())


async def test_forget_shard_drops_only_that_shards_cached_entities(rig: Rig, gate: LeasedShards) -> None:
    ids = [f"e{n}" for n in range(40)]
    for entity_id in ids:
        gate.tokens[shard(entity_id)] = 1
        await rig.command(entity_id, 1)
    leaving = shard(ids[0])
    in_leaving = [entity_id for entity_id in ids if shard(entity_id) == leaving]
    assert rig.host.forget_shard(leaving) == len(in_leaving)
    assert all(entity_id not in rig.host for entity_id in in_leaving)
    assert all(entity_id in rig.host for entity_id in ids if shard(entity_id) != leaving)
    assert rig.host.busy_in_shard(leaving) == 0


async def test_busy_in_shard_counts_entities_with_requests_in_flight(rig: Rig, gate: LeasedShards) -> None:
    gate.tokens[shard("busy")] = 1
    rig.handler.gate = asyncio.Event()
    running = asyncio.create_task(rig.host.process_command("busy", packed_int(1), [], rig.deadline()))
    for _ in range(100):
        if rig.host.busy_in_shard(shard("busy")):
            break
        await asyncio.sleep(0.01)
    assert rig.host.busy_in_shard(shard("busy")) == 1
    rig.handler.gate.set()
    assert (await running).revision == 1
    assert rig.host.busy_in_shard(shard("busy")) == 0
