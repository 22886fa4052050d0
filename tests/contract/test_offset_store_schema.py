"""The offset stores' rows on SQL: upstream's tables and encoding, read back raw, and rows upstream wrote
read by the store. Parametrised over SQLite and PostgreSQL; the in-memory store has no tables, so its
behaviour is checked by test_offset_store_contract.py alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chiefofstate.core.errors import Internal
from chiefofstate.ports.offsets import ShardRecord
from tests.contract.conftest import SQL_STORES, Stores, opened_stores


@pytest.fixture(params=SQL_STORES)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async with opened_stores(request.param, request, tmp_path) as opened:
        yield opened


async def test_offsets_are_stored_in_upstreams_table_and_encoding(stores: Stores) -> None:
    await stores.offsets.save_offsets([("accounts", 3, 41)])
    await stores.offsets.save_offsets([("accounts", 3, 42)])  # an upsert, not a second row
    rows = await stores.fetch(
        "SELECT projection_name, projection_key, current_offset, manifest, mergeable, last_updated "
        "FROM read_side_offsets"
    )
    assert rows == [
        ("accounts", "3", "42", "SEQ", False if stores.kind == "postgres" else 0, 1_700_000_000_000)
    ]


async def test_offsets_written_by_upstream_are_read_and_unknown_manifests_refused(stores: Stores) -> None:
    await stores.execute(
        "INSERT INTO read_side_offsets VALUES ('legacy', '0', '17', 'SEQ', FALSE, 1), "
        "('legacy', '1', '5', 'SEQ', FALSE, 1)"
    )
    assert await stores.offsets.load("legacy") == {0: ShardRecord(offset=17), 1: ShardRecord(offset=5)}
    await stores.execute("INSERT INTO read_side_offsets VALUES ('odd', '0', 'x', 'TSP', FALSE, 1)")
    with pytest.raises(Internal, match="manifest 'TSP'"):
        await stores.offsets.load("odd")


async def test_pause_flags_live_in_upstreams_read_sides_table(stores: Stores) -> None:
    await stores.offsets.set_paused("accounts", [0, 1, 2, 3], True)
    await stores.offsets.set_paused("accounts", [1], False)
    rows = await stores.fetch(
        "SELECT projection_key, paused, last_updated FROM read_sides WHERE projection_name = 'accounts' "
        "ORDER BY projection_key"
    )
    assert [(key, bool(paused), at) for key, paused, at in rows] == [
        (str(shard), shard != 1, 1_700_000_000_000) for shard in range(4)
    ]
