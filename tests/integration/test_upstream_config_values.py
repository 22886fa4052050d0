"""Configuration values upstream starts with start a real node here too (docs/configuration.md, "Values
accepted as upstream accepts them"): each case starts `cos serve`, sends a command through it and checks
what the node said about the value."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process, start_node_on_free_ports
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.stores.migrations import split_statements
from tests.integration.conftest import base_env, postgres_env
from tests.support.postgres import PgServer

pytestmark = pytest.mark.integration

Starter = Callable[..., Process]


@pytest.fixture
def start(tmp_path: Path, bank_handler: Process) -> Iterator[Starter]:
    started: list[Process] = []

    def run(store: dict[str, str], **overrides: str) -> Process:
        env = {**base_env(bank_handler.ports["write_side"]), **store}
        node = start_node_on_free_ports(env, tmp_path / "logs", name=f"node-{len(started)}", **overrides)
        started.append(node)
        return node

    yield run
    for node in started:
        node.stop()


async def deposited(node: Process) -> int:
    """Opens an account and deposits into it through the node; the revision it answers."""
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for command in (bank.open_account("ada"), bank.deposit(5)):
            reply = await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="acct-1", command=command), timeout=20
            )
    return int(reply.meta.revision_number)


def sqlite_store(tmp_path: Path) -> dict[str, str]:
    return {"COS_DB_PATH": str(tmp_path / "cos.db")}


async def test_log_level_off_starts_a_node_that_logs_nothing(start: Starter, tmp_path: Path) -> None:
    node = start(sqlite_store(tmp_path), LOG_LEVEL="OFF")
    assert await deposited(node) == 2
    node.stop()
    assert node.log_text().strip() == ""


async def test_a_client_pool_over_64_starts_capped(start: Starter, tmp_path: Path) -> None:
    node = start(sqlite_store(tmp_path), COS_GRPC_CLIENT_POOL_SIZE="200")
    assert await deposited(node) == 2
    assert "warning: COS_GRPC_CLIENT_POOL_SIZE=200 is more channels than help; using 64" in node.log_text()


async def test_keepalive_values_are_ignored_while_keepalive_is_off(start: Starter, tmp_path: Path) -> None:
    node = start(sqlite_store(tmp_path), COS_GRPC_KEEPALIVE_TIME="whenever", COS_GRPC_KEEPALIVE_TIMEOUT="x")
    assert await deposited(node) == 2
    assert "warning: COS_GRPC_KEEPALIVE_TIME is set but not used" in node.log_text()


async def test_min_idle_above_the_pool_size_is_clamped(
    start: Starter, pg_database: tuple[PgServer, str]
) -> None:
    node = start(postgres_env(*pg_database), COS_DB_POOL_MAX_SIZE="3", COS_DB_POOL_MIN_IDLE_CONNECTIONS="8")
    assert await deposited(node) == 2
    assert "COS_DB_POOL_MIN_IDLE_CONNECTIONS=8 exceeds COS_DB_POOL_MAX_SIZE=3; using 3" in node.log_text()


async def test_the_initial_migration_version_is_trimmed(start: Starter, tmp_path: Path) -> None:
    # a journal as upstream's version 6 left it, taken over with the version given with spaces around
    upstream_schema = (
        resources.files("chiefofstate.stores")
        .joinpath("sqlite", "migrations", "0006_initial.sql")
        .read_text()
    )
    with sqlite3.connect(tmp_path / "cos.db") as database:
        for statement in split_statements(upstream_schema):
            database.execute(statement)
    node = start(sqlite_store(tmp_path), COS_MIGRATIONS_INITIAL_VERSION=" 6\n")
    assert await deposited(node) == 2
    with sqlite3.connect(tmp_path / "cos.db") as database:
        first = database.execute("SELECT min(version_number) FROM cos_migrations").fetchone()
    assert first == (6,)


async def test_namely_era_variables_are_named_as_retired(start: Starter, tmp_path: Path) -> None:
    node = start(
        sqlite_store(tmp_path), COS_ENABLED_PLUGINS="persisted_headers", COS_READ_SIDE_OFFSET_DB_HOST="db"
    )
    assert await deposited(node) == 2
    log = node.log_text()
    assert "warning: COS_ENABLED_PLUGINS is no longer read" in log
    assert "warning: COS_READ_SIDE_OFFSET_DB_HOST is no longer read" in log
