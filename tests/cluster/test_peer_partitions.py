"""Three members under load while one member's peer link is cut, held one way, reset, slowed, and while
one member is isolated from its peers and the database; each seed a different order and different
members (tests/cluster/partitions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.partitions import peer_partitions
from tests.faults.conftest import Judge
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_partitions_between_members_lose_nothing_and_heal(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    outcome = peer_partitions(seed, tmp_path, pg_server)
    judge(outcome)
    assert outcome.result.takeover_seconds, "the isolated member's shards were never taken over"
