"""GET /cluster/members on the management port answers in the shape upstream's nodes use there
(docs/cluster.md, "Membership over HTTP"), so scripts written against upstream keep working: every live
member on every member, a member that stops leaves the list, and a node alone lists itself."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chiefofstate.cli.processes import Process, start_node_on_free_ports
from tests.integration.conftest import base_env
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env, postgres_store_env
from tests.support.cluster_status import settled
from tests.support.postgres import PgServer

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
KEYS = {"selfNode", "members", "unreachable", "leader", "oldest", "oldestPerRole"}


def members_of(management_port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{management_port}/cluster/members"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        document: dict[str, Any] = json.loads(response.read())
    assert set(document) == KEYS
    return document


def uri(node: Node) -> str:
    return f"pekko://ChiefOfStateSystem@127.0.0.1:{node.cluster_port}"


@pytest.fixture
def cluster(tmp_path: Path, pg_database: tuple[PgServer, str]) -> Iterator[Cluster]:
    server, database = pg_database
    store_env = postgres_store_env(server.host, server.port, server.user, server.password, database)
    with (
        BankHandler(tmp_path / "logs") as handler,
        Cluster(node_base_env(handler.port, os.environ), store_env, tmp_path / "logs") as cluster,
    ):
        yield cluster


async def test_every_member_lists_the_live_members_and_a_stopped_one_leaves_the_list(
    cluster: Cluster,
) -> None:
    first, second = cluster.add_node(), cluster.add_node()
    await settled(first)
    for node in (first, second):
        document = members_of(node.management_port)
        assert document["selfNode"] == uri(node)
        assert sorted(member["node"] for member in document["members"]) == sorted([uri(first), uri(second)])
        assert all(m["status"] == "Up" and m["roles"] == ["dc-default"] for m in document["members"])
        assert all(m["nodeUid"].isdigit() for m in document["members"])
        assert document["unreachable"] == []
        # the member up longest: the first one started
        assert document["oldest"] == document["leader"] == uri(first)
        assert document["oldestPerRole"] == {"dc-default": uri(first)}
    uids = {m["node"]: m["nodeUid"] for m in members_of(first.management_port)["members"]}
    assert len(set(uids.values())) == 2

    assert first.terminate() == 0
    deadline = time.monotonic() + DEADLINE_S
    while [m["node"] for m in members_of(second.management_port)["members"]] != [uri(second)]:
        assert time.monotonic() < deadline, members_of(second.management_port)
        await asyncio.sleep(0.3)
    document = members_of(second.management_port)
    assert document["oldest"] == document["leader"] == uri(second)


def test_a_node_outside_a_cluster_lists_itself(tmp_path: Path, bank_handler: Process) -> None:
    env = {**base_env(bank_handler.ports["write_side"]), "COS_DB_PATH": str(tmp_path / "cos.db")}
    node = start_node_on_free_ports(env, tmp_path / "logs")
    try:
        document = members_of(node.ports["management"])
        assert len(document["members"]) == 1
        (alone,) = document["members"]
        assert alone["node"] == document["selfNode"] == document["leader"] == document["oldest"]
        assert alone["node"].startswith("pekko://ChiefOfStateSystem@") and alone["status"] == "Up"
    finally:
        node.stop()
