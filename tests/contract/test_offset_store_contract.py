"""The offset store contract: every test runs on SQLite, on PostgreSQL (each against a migrated journal) and
in memory, through the port alone. What the SQL stores write in upstream's tables is
test_offset_store_schema.py's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.ports.offsets import Halt, ProjectionChange, ShardRecord
from tests.contract.conftest import STORES, Stores, opened_stores


@pytest.fixture(params=STORES)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async with opened_stores(request.param, request, tmp_path) as opened:
        yield opened


async def test_nothing_is_stored_for_a_new_read_side(stores: Stores) -> None:
    assert await stores.offsets.load("accounts") == {}


async def test_an_offset_saved_again_replaces_the_first(stores: Stores) -> None:
    await stores.offsets.save_offsets([("accounts", 3, 41)])
    await stores.offsets.save_offsets([("accounts", 3, 42)])  # an upsert, not a second row
    assert await stores.offsets.load("accounts") == {3: ShardRecord(offset=42)}


async def test_many_offsets_are_stored_in_one_call(stores: Stores) -> None:
    await stores.offsets.save_offsets([("a", 0, 5), ("a", 1, 6), ("b", 0, 7)])
    await stores.offsets.save_offsets([("a", 1, 9)])
    assert await stores.offsets.load("a") == {0: ShardRecord(offset=5), 1: ShardRecord(offset=9)}
    assert await stores.offsets.load("b") == {0: ShardRecord(offset=7)}
    await stores.offsets.save_offsets([])


async def test_pause_flags_are_stored_per_shard(stores: Stores) -> None:
    await stores.offsets.set_paused("accounts", [0, 1, 2, 3], True)
    await stores.offsets.set_paused("accounts", [1], False)
    loaded = await stores.offsets.load("accounts")
    assert {shard: record.paused for shard, record in loaded.items()} == {0: True, 1: False, 2: True, 3: True}


async def test_a_halt_is_stored_with_the_offset_reached_and_cleared_on_its_own(stores: Stores) -> None:
    halt = Halt(event_offset=12, reason="read handler answered successful=false", halted_at_ms=99)
    await stores.offsets.save_halt("accounts", 2, 11, halt)
    assert await stores.offsets.load("accounts") == {2: ShardRecord(offset=11, halt=halt)}
    await stores.offsets.save_halt("accounts", 3, None, halt)  # halted on the very first event
    assert (await stores.offsets.load("accounts"))[3] == ShardRecord(offset=None, halt=halt)
    await stores.offsets.clear_halt("accounts", 2)
    assert (await stores.offsets.load("accounts"))[2] == ShardRecord(offset=11)


async def test_skip_to_stores_the_offset_and_forgets_the_halt(stores: Stores) -> None:
    await stores.offsets.save_halt("accounts", 1, 5, Halt(9, "failed", 1))
    await stores.offsets.skip_to("accounts", 1, 9)
    assert await stores.offsets.load("accounts") == {1: ShardRecord(offset=9)}


async def test_reset_forgets_offset_and_halt_but_keeps_the_pause_flag(stores: Stores) -> None:
    await stores.offsets.save_halt("accounts", 0, 5, Halt(9, "failed", 1))
    await stores.offsets.set_paused("accounts", [0], True)
    await stores.offsets.reset("accounts", 0)
    assert await stores.offsets.load("accounts") == {0: ShardRecord(paused=True)}


async def test_read_sides_are_kept_apart(stores: Stores) -> None:
    await stores.offsets.save_offsets([("a", 0, 1)])
    await stores.offsets.set_paused("b", [0], True)
    await stores.offsets.save_halt("c", 0, None, Halt(3, "x", 1))
    assert await stores.offsets.load("a") == {0: ShardRecord(offset=1)}
    assert await stores.offsets.load("b") == {0: ShardRecord(paused=True)}
    assert await stores.offsets.load("c") == {0: ShardRecord(halt=Halt(3, "x", 1))}


async def test_a_closed_store_is_unavailable(stores: Stores) -> None:
    await stores.offsets.close()
    with pytest.raises(StoreUnavailable):
        await stores.offsets.load("accounts")


async def test_a_closed_store_refuses_writes_too(stores: Stores) -> None:
    await stores.offsets.close()
    with pytest.raises(StoreUnavailable):
        await stores.offsets.save_offsets([("accounts", 0, 1)])
    with pytest.raises(StoreUnavailable):
        await stores.offsets.set_paused("accounts", [0], True)


async def test_a_manager_operation_changes_every_shard_in_one_call(stores: Stores) -> None:
    offsets = stores.offsets
    halt = Halt(event_offset=12, reason="failed", halted_at_ms=99)
    await offsets.save_offsets([("accounts", 0, 5), ("accounts", 1, 6), ("accounts", 2, 7)])
    await offsets.save_halt("accounts", 1, None, halt)

    await offsets.apply_change("accounts", ProjectionChange((0, 1, 2), paused=True))
    assert {shard: record.paused for shard, record in (await offsets.load("accounts")).items()} == {
        0: True,
        1: True,
        2: True,
    }
    # resume: every flag cleared, and the halt with it
    assert (
        await offsets.apply_change("accounts", ProjectionChange((0, 1, 2), paused=False, clear_halts=True))
        == set()
    )
    assert await offsets.load("accounts") == {
        0: ShardRecord(offset=5),
        1: ShardRecord(offset=6),
        2: ShardRecord(offset=7),
    }
    # skip: new offsets for the shards that had an event, halts forgotten on all
    await offsets.save_halt("accounts", 2, None, halt)
    await offsets.apply_change(
        "accounts", ProjectionChange((0, 1, 2), clear_halts=True, offsets={0: 9, 2: 12})
    )
    loaded = await offsets.load("accounts")
    assert (loaded[0].offset, loaded[1].offset, loaded[2].offset, loaded[2].halt) == (9, 6, 12, None)
    # restart: offsets and halts forgotten, pause flags kept, other read sides untouched
    await offsets.save_offsets([("other", 0, 3)])
    await offsets.apply_change("accounts", ProjectionChange((0, 1), paused=True))
    await offsets.apply_change("accounts", ProjectionChange((0, 1, 2), forget_offsets=True, clear_halts=True))
    loaded = await offsets.load("accounts")
    assert [
        (loaded.get(shard, ShardRecord()).offset, loaded.get(shard, ShardRecord()).paused)
        for shard in range(3)
    ] == [
        (None, True),
        (None, True),
        (None, False),
    ]
    assert await offsets.load("other") == {0: ShardRecord(offset=3)}
