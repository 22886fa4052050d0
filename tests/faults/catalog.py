"""Every single-node scenario by name, for `python -m tests.faults`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults.clock import clock_jump
from tests.faults.disk import disk_full
from tests.faults.handler_stall import handler_stall
from tests.faults.points import kill_at_points
from tests.faults.read_handler import read_handler_faults
from tests.faults.scenarios import (
    Outcome,
    Settings,
    break_database_link,
    kill_handler,
    kill_node,
    stop_postgres,
)
from tests.support.postgres import PgServer


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[int, Path, PgServer | None, Settings], Outcome]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("kill-node/postgres", lambda seed, wd, pg, s: kill_node(seed, wd, pg=pg, settings=s)),
    Scenario(
        "kill-node/sqlite", lambda seed, wd, pg, s: kill_node(seed, wd, store_kind="sqlite", settings=s)
    ),
    Scenario("stop-postgres", lambda seed, wd, pg, s: stop_postgres(seed, wd, settings=s)),
    Scenario("kill-handler/postgres", lambda seed, wd, pg, s: kill_handler(seed, wd, pg=pg, settings=s)),
    Scenario("db-link/postgres", lambda seed, wd, pg, s: break_database_link(seed, wd, pg=pg, settings=s)),
    Scenario("clock-jump/postgres", lambda seed, wd, pg, s: clock_jump(seed, wd, pg=pg, settings=s)),
    Scenario(
        "clock-jump/sqlite", lambda seed, wd, pg, s: clock_jump(seed, wd, store_kind="sqlite", settings=s)
    ),
    Scenario("disk-full/sqlite", lambda seed, wd, pg, s: disk_full(seed, wd, settings=s)),
    Scenario("kill-points/postgres", lambda seed, wd, pg, s: kill_at_points(seed, wd, pg=pg, settings=s)),
    Scenario(
        "kill-points/sqlite",
        lambda seed, wd, pg, s: kill_at_points(seed, wd, store_kind="sqlite", settings=s),
    ),
    Scenario("handler-stall/postgres", lambda seed, wd, pg, s: handler_stall(seed, wd, pg=pg, settings=s)),
    Scenario(
        "read-handler/postgres", lambda seed, wd, pg, s: read_handler_faults(seed, wd, pg=pg, settings=s)
    ),
)
