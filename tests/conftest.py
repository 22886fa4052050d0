from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.postgres import PgServer, fresh_database, test_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with test_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    """A fresh, empty PostgreSQL database for one test: (server, database name)."""
    with fresh_database(pg_server, f"cos_test_{uuid.uuid4().hex[:12]}") as name:
        yield pg_server, name
