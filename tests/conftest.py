from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import HealthCheck, settings

from tests.support.postgres import PgServer, fresh_database, test_server

# Property tests run on shared, busy machines: how long one example takes there says nothing about the
# code, so neither the per-example deadline nor the "input generation is slow" check may fail a test.
settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with test_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    """A fresh, empty PostgreSQL database for one test: (server, database name)."""
    with fresh_database(pg_server, f"cos_test_{uuid.uuid4().hex[:12]}") as name:
        yield pg_server, name


# --------------------------------------------------------------------------------- leftover processes
# A test that fails half-way must still stop every process it started: one left running keeps ports,
# files and CPU, and pytest can hang at exit waiting on it. After each test the children of this
# process are listed (a few milliseconds), so that the session-end check can name the test that left
# one; at the end of the session any still running fails the run and is killed.

_FIRST_SEEN_AFTER: dict[int, str] = {}


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    for child in _children():
        _FIRST_SEEN_AFTER.setdefault(child.pid, item.nodeid)


def _describe(child: psutil.Process) -> str:
    try:
        command = " ".join(child.cmdline())[:200]
    except psutil.Error:
        command = "?"
    return f"pid {child.pid} ({command}), first seen after {_FIRST_SEEN_AFTER.get(child.pid, '?')}"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Session-scoped fixtures (the test PostgreSQL server) are torn down before this hook runs.
    leftovers = [child for child in _children() if child.is_running() and child.status() != "zombie"]
    if not leftovers:
        return
    lines = [f"  {_describe(child)}" for child in leftovers]
    sys.stderr.write(
        f"\n{len(leftovers)} process(es) started by tests still running at the end of the session "
        "(killed now):\n" + "\n".join(lines) + "\n"
    )
    for child in leftovers:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(leftovers, timeout=10)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
