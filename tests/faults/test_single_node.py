"""One node under load, faults injected at seeded random moments, the history checked against the
journal (tests/faults/scenarios.py). A few seeds here; `python -m tests.faults --runs N` for long runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import clock, disk, handler_stall, points, read_handler, scenarios
from tests.faults.conftest import Judge
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_of_the_node_under_load_on_postgres(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(scenarios.kill_node(seed, tmp_path, pg=pg_server))


@pytest.mark.parametrize("seed", [1])
def test_kill_9_of_the_node_under_load_on_sqlite(seed: int, tmp_path: Path, judge: Judge) -> None:
    judge(scenarios.kill_node(seed, tmp_path, store_kind="sqlite"))


@pytest.mark.parametrize("seed", [1])
def test_postgres_stopped_hard_and_started_again_under_load(seed: int, tmp_path: Path, judge: Judge) -> None:
    judge(scenarios.stop_postgres(seed, tmp_path))


@pytest.mark.parametrize("seed", [1])
def test_kill_9_of_the_write_handler_under_load(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(scenarios.kill_handler(seed, tmp_path, pg=pg_server))


@pytest.mark.parametrize("seed", [1])
def test_database_link_reset_held_and_slowed_under_load(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(scenarios.break_database_link(seed, tmp_path, pg=pg_server))


# The newer faults run shorter in CI (one seed each, 10 s of faults); `python -m tests.faults` runs them
# at full length.
SHORT = scenarios.Settings(duration_s=10.0, after_s=3.0, quiet_end_s=3.0)


@pytest.mark.parametrize("seed", [1])
def test_wall_clock_steps_change_nothing_on_postgres(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(clock.clock_jump(seed, tmp_path, pg=pg_server, settings=SHORT))


@pytest.mark.parametrize("seed", [1])
def test_wall_clock_steps_change_nothing_on_sqlite(seed: int, tmp_path: Path, judge: Judge) -> None:
    judge(clock.clock_jump(seed, tmp_path, store_kind="sqlite", settings=SHORT))


@pytest.mark.parametrize("seed", [1])
def test_a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart(
    seed: int, tmp_path: Path, judge: Judge
) -> None:
    judge(disk.disk_full(seed, tmp_path, settings=SHORT))


# kill -9 at chosen points of a command's path (tests/faults/points.py): one seed each, 12 s of faults,
# enough for one kill at every point.
POINTS_SHORT = scenarios.Settings(duration_s=12.0, after_s=3.0, quiet_end_s=3.0)


@pytest.mark.parametrize("seed", [1])
def test_kill_9_inside_the_handler_call_the_append_and_before_the_reply_on_postgres(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(points.kill_at_points(seed, tmp_path, pg=pg_server, settings=POINTS_SHORT))


@pytest.mark.parametrize("seed", [1])
def test_kill_9_inside_the_handler_call_and_before_the_reply_on_sqlite(
    seed: int, tmp_path: Path, judge: Judge
) -> None:
    judge(points.kill_at_points(seed, tmp_path, store_kind="sqlite", settings=POINTS_SHORT))


# Long enough for one stop past the command time and one slow spell.
STALL_SHORT = scenarios.Settings(duration_s=14.0, after_s=3.0, quiet_end_s=3.0)


@pytest.mark.parametrize("seed", [1])
def test_a_stopped_or_slow_write_handler_gives_timely_statuses_and_reads_go_on(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(handler_stall.handler_stall(seed, tmp_path, pg=pg_server, settings=STALL_SHORT))


# Three faults of 2-3.5 s each with short pauses between them.
READ_HANDLER_SHORT = scenarios.Settings(duration_s=16.0, after_s=3.0, quiet_end_s=3.0)


@pytest.mark.parametrize("seed", [1])
def test_a_read_side_catches_up_in_order_after_its_handler_was_killed_stopped_and_slowed(
    seed: int, tmp_path: Path, pg_server: PgServer, judge: Judge
) -> None:
    judge(read_handler.read_handler_faults(seed, tmp_path, pg=pg_server, settings=READ_HANDLER_SHORT))
