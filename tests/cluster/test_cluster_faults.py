"""Three members under load, each seed a different order of kill -9, zombie, SIGTERM and join; every
run judged by the history checker (tests/cluster/scenarios.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.scenarios import cluster_life
from tests.faults.conftest import Judge
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_cluster_loses_nothing_through_kill_pause_leave_and_join(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    outcome = cluster_life(seed, tmp_path, pg_server)
    judge(outcome)
    assert outcome.result.takeover_seconds, "no takeover was measured"
