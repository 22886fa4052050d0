from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support.postgres import PgServer, fresh_database, test_server

# The suite runs on busy two-core machines: hypothesis's wall-clock checks (a per-example deadline, "input
# generation is slow") would fail tests for the machine's load, not for what they test.
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
