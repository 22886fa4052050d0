"""Real processes for integration tests: the bank write handler and `cos serve` nodes, on both stores."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from chiefofstate.cli.processes import Process, start_bank_write_handler, start_node_on_free_ports
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.support.owned import stop_all
from tests.support.postgres import PgServer

pytestmark = pytest.mark.integration

NodeFactory = Callable[..., Process]

WRITE_PROTOCOLS = ("grpc", "http")
# Runs a test module (or test) once per write-side protocol: the bank handler, and every node the
# test starts, speak gRPC in one run and upstream's HTTP write-side protocol in the other.
both_write_protocols = pytest.mark.parametrize("write_protocol", WRITE_PROTOCOLS, indirect=True)


def grpc_write_side_only(reason: str) -> pytest.MarkDecorator:
    """For a test of behaviour the HTTP write-side protocol cannot have (docs/contract.md §9): its `http`
    variant is not collected; `reason` must say why the protocol rules it out."""
    return pytest.mark.grpc_write_side_only(reason=reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the `http` variant of grpc_write_side_only tests: the behaviour does not exist there, so
    the variant is not a test at all (rather than a skip that could hide a missing feature)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        http_variant = callspec is not None and callspec.params.get("write_protocol") == "http"
        if http_variant and item.get_closest_marker("grpc_write_side_only") is not None:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def handler_refusal(write_protocol: str, code: grpc.StatusCode) -> grpc.StatusCode:
    """What the caller gets when the bank refuses a command with `code`: the same status from a gRPC
    handler, INTERNAL from an HTTP one (which cannot choose a status, docs/contract.md §9)."""
    return code if write_protocol == "grpc" else grpc.StatusCode.INTERNAL


@pytest.fixture(scope="session")
def write_protocol(request: pytest.FixtureRequest) -> str:
    """gRPC unless the test is parametrized with `both_write_protocols`."""
    return str(getattr(request, "param", "grpc"))


@pytest.fixture(scope="session")
def bank_handler(tmp_path_factory: pytest.TempPathFactory, write_protocol: str) -> Iterator[Process]:
    handler = start_bank_write_handler(tmp_path_factory.mktemp("bank"), protocol=write_protocol)
    yield handler
    handler.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment variables selecting each store in turn: a fresh database for every test."""
    if request.param == "sqlite":
        return {"COS_DB_PATH": str(tmp_path / "cos.db")}
    server, database = request.getfixturevalue("pg_database")
    return postgres_env(server, database)


def postgres_env(server: PgServer, database: str) -> dict[str, str]:
    return {
        "COS_DB_HOST": server.host,
        "COS_DB_PORT": str(server.port),
        "COS_DB_USER": server.user,
        "COS_DB_PASSWORD": server.password,
        "COS_DB_NAME": database,
    }


def base_env(handler_port: int, write_protocol: str = "grpc") -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COS_", "LOG_"))}
    env.update(
        COS_WRITE_SIDE_PROTOCOL=write_protocol,
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(handler_port),
        LOG_LEVEL="INFO",
        LOG_STYLE="JSON",
    )
    return env


@pytest.fixture
def node_factory(
    tmp_path: Path, bank_handler: Process, store_env: dict[str, str], write_protocol: str
) -> Iterator[NodeFactory]:
    """Starts `cos serve` processes on the test's store; every one is stopped at the end."""
    started: list[Process] = []

    def start(wait: bool = True, **overrides: str) -> Process:
        handler_env = base_env(bank_handler.ports["write_side"], write_protocol)
        process = start_node_on_free_ports(
            {**handler_env, **store_env},
            tmp_path / "logs",
            name=f"cos-node-{len(started)}",
            wait=wait,
            **overrides,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        stop_all(started, kill=True)


@pytest.fixture
async def node(node_factory: NodeFactory) -> AsyncIterator[Process]:
    yield node_factory()


@pytest.fixture
async def cos(node: Process) -> AsyncIterator[ChiefOfStateServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        yield ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
