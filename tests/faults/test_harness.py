"""The fault harness itself: the cluster helper's ports, signals and database proxies, and a check
that the journal reader and the checker do catch an acknowledged write that went missing."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from chiefofstate_examples.bank import client as bank

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env, postgres_store_env
from tests.support.history import History, ViolationKind, check
from tests.support.journal_reader import read_journal
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PATIENCE_S = 60.0  # for anything that must happen eventually on a busy machine


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[BankHandler]:
    with BankHandler(tmp_path / "logs") as running:
        yield running


@pytest.fixture
def store_env(pg_database: tuple[PgServer, str]) -> dict[str, str]:
    server, database = pg_database
    return postgres_store_env(server.host, server.port, server.user, server.password, database)


@pytest.fixture
def cluster(tmp_path: Path, handler: BankHandler, store_env: dict[str, str]) -> Iterator[Cluster]:
    with Cluster(
        node_base_env(handler.port, os.environ), store_env, tmp_path / "logs", proxied=True
    ) as nodes:
        yield nodes


def deposit(node: Node, entity: str, token: str, timeout_s: float = 10, *, opening: bool = False) -> int:
    """A deposit carrying `token` (or, `opening`, the account's opening with `token` as its owner), over
    a fresh channel so that no connection state carries over between faults."""
    command = bank.open_account(token, 0) if opening else bank.deposit(1, reference=token)
    with grpc.insecure_channel(node.target) as channel:
        stub = ChiefOfStateServiceStub(channel)
        reply = stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=entity, command=command), timeout=timeout_s
        )
        return int(reply.meta.revision_number)


def status_of_deposit(node: Node, entity: str, timeout_s: float) -> grpc.StatusCode | None:
    try:
        deposit(node, entity, f"probe-{uuid.uuid4().hex}", timeout_s)
    except grpc.RpcError as error:
        return error.code()
    return None


def eventually_deposits(node: Node, entity: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while (code := status_of_deposit(node, entity, 5)) is not None:
        assert time.monotonic() < deadline, f"{node.name} still answers {code}"
        time.sleep(0.2)


def test_nodes_get_distinct_ports_their_peer_address_and_their_own_database_proxy(cluster: Cluster) -> None:
    first = cluster.add_node()
    second = cluster.add_node(proxied=False)
    ports = [
        int(node.env[name])
        for node in cluster.nodes
        for name in (
            "COS_PORT",
            "COS_MANAGEMENT_PORT",
            "COS_HTTP_PORT",
            "COS_PROMETHEUS_PORT",
            "COS_CLUSTER_PORT",
        )
    ]
    assert first.proxy is not None
    ports.append(first.proxy.port)
    assert len(set(ports)) == len(ports)
    assert all(not 32768 <= port <= 60999 for port in ports)
    assert first.env["COS_NODE_ADDRESS"] == second.env["COS_NODE_ADDRESS"] == "127.0.0.1"
    assert first.env["COS_DB_PORT"] == str(first.proxy.port)
    assert second.proxy is None and second.env["COS_DB_PORT"] == cluster.store_env["COS_DB_PORT"]
    assert cluster.targets == [first.target, second.target]
    assert deposit(first, "h-1", "owner", opening=True) == 1
    assert first.proxy.accepted >= 1  # the node's database connections went through its proxy


def test_signals_pause_resume_terminate_and_restart_on_the_same_ports(cluster: Cluster) -> None:
    node = cluster.add_node(proxied=False)
    assert deposit(node, "h-2", "owner", opening=True) == 1
    node.pause()
    assert status_of_deposit(node, "h-2", timeout_s=1) == grpc.StatusCode.DEADLINE_EXCEEDED
    node.resume()
    eventually_deposits(node, "h-2")
    ports = dict(node.env)
    assert node.terminate() == 0
    assert not node.alive()
    node.start()
    assert node.env == ports and node.ready()
    node.kill()
    node.restart()
    eventually_deposits(node, "h-2")
    assert "node0" in node.log_text()


def test_a_reset_database_link_fails_commands_until_it_passes_again(cluster: Cluster) -> None:
    node = cluster.add_node(COS_DB_CONNECT_TIMEOUT="1s")
    assert node.proxy is not None
    assert deposit(node, "h-3", "owner", opening=True) == 1
    node.proxy.reset()
    assert status_of_deposit(node, "h-3", timeout_s=10) == grpc.StatusCode.UNAVAILABLE
    node.proxy.passthrough()
    eventually_deposits(node, "h-3")


def test_an_acknowledged_deposit_removed_from_the_journal_is_reported_lost(
    cluster: Cluster, store_env: dict[str, str], pg_database: tuple[PgServer, str]
) -> None:
    node = cluster.add_node(proxied=False)
    history = History("harness")
    for number in range(4):
        token = f"harness/{number}"
        op = history.begin("command", "h-4", node=node.target, token=token)
        history.ok(op, deposit(node, "h-4", token, opening=number == 0))
    journal = read_journal(store_env, prefix="h-")
    assert [revision for revision, _ in journal["h-4"]] == [1, 2, 3, 4]
    assert journal["h-4"] == [(1, "harness/0"), (2, "harness/1"), (3, "harness/2"), (4, "harness/3")]
    assert check(history, journal).ok

    server, database = pg_database
    with psycopg.connect(server.dsn(database)) as connection:
        connection.execute("DELETE FROM event_journal WHERE persistence_id = 'h-4' AND sequence_number = 4")
    result = check(history, read_journal(store_env, prefix="h-"))
    assert result.count(ViolationKind.LOST) == 1
    assert "harness/3" in str(result.violations_of(ViolationKind.LOST)[0])
