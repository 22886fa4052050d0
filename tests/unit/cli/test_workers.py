"""The worker supervisor, with small Python scripts for workers (docs/cluster.md, "Workers")."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from chiefofstate.cli.workers import Backoff, Supervisor

DEADLINE_S = 30.0

# Each run of a worker leaves a file `<index>.<run>`; what it does then depends on its index and run.
WORKER = """
import os, signal, sys, time
from pathlib import Path
folder, index = Path(os.environ["RUNS"]), os.environ["COS_WORKER_INDEX"]
assert os.environ["COS_WORKERS"] == "1"
run = len(list(folder.glob(index + ".*")))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(folder / f"{index}.{run}").touch()
exit_code = os.environ.get("EXIT_" + index + "_" + str(run))
if exit_code is not None:
    sys.exit(int(exit_code))
while True:
    time.sleep(60)
"""

FAST = Backoff(first_s=0.05, longest_s=0.2)


def supervisor(runs: Path, count: int, **env: str) -> Supervisor:
    environ = {**os.environ, "RUNS": str(runs), **env}
    return Supervisor(count, environ, command=[sys.executable, "-c", WORKER], backoff=FAST)


async def until(condition: object) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not (callable(condition) and condition()):
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


def runs_of(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


async def test_sigterm_is_passed_on_and_the_supervisor_exits_0_once_all_stopped(tmp_path: Path) -> None:
    running = asyncio.create_task(supervisor(tmp_path, 3).run())
    await until(lambda: runs_of(tmp_path) == {"0.0", "1.0", "2.0"})
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, DEADLINE_S) == 0
    assert runs_of(tmp_path) == {"0.0", "1.0", "2.0"}  # none restarted


async def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    running = asyncio.create_task(supervisor(tmp_path, 2, EXIT_1_0="1", EXIT_1_1="0").run())
    await until(lambda: runs_of(tmp_path) == {"0.0", "1.0", "1.1", "1.2"})
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(running, DEADLINE_S) == 0


async def test_a_configuration_error_stops_every_worker_with_exit_2(tmp_path: Path) -> None:
    running = asyncio.create_task(supervisor(tmp_path, 2, EXIT_1_0="2").run())
    assert await asyncio.wait_for(running, DEADLINE_S) == 2
    assert "1.1" not in runs_of(tmp_path)  # not restarted


async def test_sigterm_right_after_the_workers_are_spawned_stops_them_all(tmp_path: Path) -> None:
    """The signal reaches workers before they have installed a handler (or even started Python): each
    still ends, and the supervisor exits 0 without restarting any."""
    watched = supervisor(tmp_path, 3)
    running = asyncio.create_task(watched.run())
    await until(lambda: len(watched._children) == 3)
    pids = [child.pid for child in watched._children.values()]
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, DEADLINE_S) == 0
    assert all(not pid_exists(pid) for pid in pids)
    assert {name.split(".")[1] for name in runs_of(tmp_path)} <= {"0"}  # none restarted


# A worker stuck in its stop: it ignores SIGTERM.
STUCK_WORKER = """
import os, signal, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
(Path(os.environ["RUNS"]) / os.environ["COS_WORKER_INDEX"]).touch()
while True:
    time.sleep(60)
"""


async def test_a_worker_that_does_not_stop_is_killed_after_the_bound(tmp_path: Path) -> None:
    environ = {**os.environ, "RUNS": str(tmp_path)}
    watched = Supervisor(
        2, environ, command=[sys.executable, "-c", STUCK_WORKER], backoff=FAST, kill_after_s=0.5
    )
    running = asyncio.create_task(watched.run())
    await until(lambda: runs_of(tmp_path) == {"0", "1"})
    pids = [child.pid for child in watched._children.values()]
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, DEADLINE_S) == 1  # killed: not a clean stop
    assert all(not pid_exists(pid) for pid in pids)


def pid_exists(pid: int) -> bool:
    """Whether `pid` is still a process (the supervisor reaps its workers, so a stopped one is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
