"""Read sides in a cluster (docs/cluster.md, "Read sides"): three `cos serve` members on PostgreSQL, the
example bank write handler and read handler as real processes.

Each (read side, shard) projection runs on exactly one member; every event reaches the read handler at
least once and in order per entity; a projection paused through one member stops on the member that
runs it; a member killed with kill -9 has its projections resumed by the others with nothing skipped.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank

from chiefofstate.cli.processes import Process, start_bank_read_handler
from chiefofstate.core.placement import assign, read_side_key
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc import ReadSideManagerServiceStub
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.gen.chiefofstate.internal.v1.readside_admin_pb2_grpc import ReadSideAdminServiceStub
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env, postgres_store_env
from tests.support.postgres import PgServer
from tests.support.readside_processes import FAST, DeliveryLog, cos_cli, no_gap_in_order, read_side, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

SHARDS = 8
READ_SIDE = "bank"
DEADLINE_S = 90.0
FAST_CLUSTER = {
    "COS_CLUSTER_HEARTBEAT_INTERVAL": "500ms",
    "COS_CLUSTER_MEMBER_TTL": "3s",
    "COS_CLUSTER_LEASE_TTL": "3s",
    "COS_CLUSTER_LEASE_RENEW_INTERVAL": "500ms",
    "COS_CLUSTER_LEASE_MARGIN": "1s",
}


@pytest.fixture
def deliveries(tmp_path: Path) -> DeliveryLog:
    return DeliveryLog(tmp_path / "deliveries.jsonl")


@pytest.fixture
def cluster(tmp_path: Path, pg_database: tuple[PgServer, str], deliveries: DeliveryLog) -> Iterator[Cluster]:
    server, database = pg_database
    logs = tmp_path / "logs"
    reader: Process = start_bank_read_handler(logs, deliveries=deliveries.path, name="read-handler")
    with BankHandler(logs) as writer:
        env = node_base_env(
            writer.port,
            os.environ,
            COS_NUM_SHARDS=str(SHARDS),
            **FAST_CLUSTER,
            **FAST,
            **read_side(READ_SIDE, reader.ports["read_side"]),
        )
        store = postgres_store_env(server.host, server.port, server.user, server.password, database)
        nodes = Cluster(env, store, logs)
        try:
            for _ in range(3):
                nodes.add_node()
            yield nodes
        finally:
            nodes.close()
            reader.stop()


def address(node: Node) -> str:
    return f"127.0.0.1:{node.cluster_port}"


def shard_members(node: Node) -> dict[int, tuple[str, str]]:
    """shard → (member address, state), as `cos readside list` shows them through `node`."""
    with grpc.insecure_channel(node.target) as channel:
        reply = ReadSideAdminServiceStub(channel).ListReadSides(  # type: ignore[no-untyped-call]
            admin.ListReadSidesRequest(read_side_id=READ_SIDE), timeout=10
        )
    (status,) = reply.read_sides
    return {
        shard.cluster_shard_number: (
            shard.member,
            admin.ProjectionState.Name(shard.state).removeprefix("PROJECTION_STATE_").lower(),
        )
        for shard in status.shards
    }


def settled(node: Node, members: list[Node]) -> bool:
    """Every projection runs on one of `members`, as seen through `node`."""
    try:
        seen = shard_members(node)
    except grpc.RpcError:
        return False
    live = {address(member) for member in members}
    return len(seen) == SHARDS and all(member in live for member, _ in seen.values())


def command(stub: ChiefOfStateServiceStub, request: pb.ProcessCommandRequest) -> int | None:
    """The revision the command wrote; None when the account exists already. A shard whose member was
    just killed answers UNAVAILABLE (nothing written) until its lease expires: retried until then."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return int(stub.ProcessCommand(request, timeout=15).meta.revision_number)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code is grpc.StatusCode.ALREADY_EXISTS:
                return None
            if code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def write(node: Node, entity_id: str, deposits: int) -> int:
    """Open the account if new and deposit `deposits` times through `node`; the last revision."""
    revision = 0
    with grpc.insecure_channel(node.target) as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        opened = pb.ProcessCommandRequest(entity_id=entity_id, command=bank.open_account(entity_id, 100))
        revision = command(stub, opened) or 0
        for _ in range(deposits):
            deposit = pb.ProcessCommandRequest(entity_id=entity_id, command=bank.deposit(1))
            revision = command(stub, deposit) or revision
    return revision


def all_delivered(deliveries: DeliveryLog, written: dict[str, int]) -> bool:
    return all(
        set(range(1, last + 1)) <= set(deliveries.revisions(READ_SIDE, entity_id))
        for entity_id, last in written.items()
    )


def entity_in_shard(shard: int, prefix: str) -> str:
    return next(f"{prefix}-{n}" for n in range(10_000) if shard_of(f"{prefix}-{n}", SHARDS) == shard)


def manager_call(node: Node, method: str, shard: int) -> None:
    """The call, retried as its UNAVAILABLE answer tells a user to while the projection's lease is moving
    (the member's routing can lag the database's placement by a round); nothing changes on a refusal."""
    give_up_at = time.monotonic() + DEADLINE_S
    with grpc.insecure_channel(node.target) as channel:
        stub = ReadSideManagerServiceStub(channel)  # type: ignore[no-untyped-call]
        request = getattr(mpb, f"{method}Request")(read_side_id=READ_SIDE, cluster_shard_number=shard)
        while True:
            try:
                assert getattr(stub, method)(request, timeout=30).successful
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up_at:
                    raise
            time.sleep(0.5)


def test_projections_run_once_each_and_move_on_a_kill_without_skipping(
    cluster: Cluster, deliveries: DeliveryLog
) -> None:
    first = cluster.nodes[0]
    # Placement is the rendezvous hashing of each projection over the members' ids (cos cluster status).
    status = cos_cli("cluster", "status", "--json", env=first.env)
    assert status.returncode == 0, status.stderr
    members = json.loads(status.stdout)["members"]
    assert len(members) == 3 and all(member["read_sides"] == [READ_SIDE] for member in members)
    addresses = {member["member_id"]: member["address"] for member in members}
    names = {read_side_key(READ_SIDE, shard): shard for shard in range(SHARDS)}
    expected = {names[name]: addresses[owner] for name, owner in assign(names, addresses).items()}
    assert len(set(expected.values())) >= 2  # the projections are spread

    def placed_as_expected(node: Node) -> bool:
        try:
            return {shard: member for shard, (member, _) in shard_members(node).items()} == expected
        except grpc.RpcError:
            return False

    for node in cluster.nodes:  # every member shows every projection and the member that runs it
        wait_for(partial(placed_as_expected, node), DEADLINE_S, f"placement seen through {node.name}")
    status = cos_cli("cluster", "status", "--json", env=first.env)
    owned = {
        projection: member["address"]
        for member in json.loads(status.stdout)["members"]
        for projection in member["projections"]
    }
    assert owned == {f"{READ_SIDE}/{shard}": member for shard, member in expected.items()}  # one each

    written = {f"acct-{n}": write(cluster.nodes[n % 3], f"acct-{n}", 4) for n in range(12)}
    deliveries.wait_until(lambda log: all_delivered(log, written), DEADLINE_S, "every event delivered")
    events = sum(written.values())
    # Once per event in a steady cluster; three members each running every projection would make it 3x.
    assert len(deliveries.all(READ_SIDE)) < 2 * events
    for entity_id in written:
        assert no_gap_in_order(deliveries.revisions(READ_SIDE, entity_id, outcome=None))

    # kill -9 the member running the most projections: the others take them once the leases expire.
    victim = max(cluster.nodes, key=lambda node: sum(m == address(node) for m in expected.values()))
    survivors = [node for node in cluster.nodes if node is not victim]
    victim.kill()
    killed_at = time.monotonic()
    for n in range(12):
        written[f"acct-{n}"] = write(survivors[n % 2], f"acct-{n}", 2)
    wait_for(lambda: settled(survivors[0], survivors), DEADLINE_S, "projections resumed by the survivors")
    deliveries.wait_until(lambda log: all_delivered(log, written), DEADLINE_S, "every event after the kill")
    assert time.monotonic() - killed_at < DEADLINE_S
    for entity_id in written:
        assert no_gap_in_order(deliveries.revisions(READ_SIDE, entity_id, outcome=None)), entity_id


def test_a_projection_paused_through_one_member_stops_on_the_member_running_it(
    cluster: Cluster, deliveries: DeliveryLog
) -> None:
    wait_for(lambda: settled(cluster.nodes[0], cluster.nodes), DEADLINE_S, "every projection placed")
    placement = shard_members(cluster.nodes[0])
    shard, (runner, _) = next(iter(sorted(placement.items())))
    owner = next(node for node in cluster.nodes if address(node) == runner)
    caller, watcher = [node for node in cluster.nodes if node is not owner]

    manager_call(caller, "PauseReadSideByShard", shard)
    # Paused wherever it runs: a rebalance may move it meanwhile, and the pause moves with it (D7).
    assert shard_members(watcher)[shard][1] == "paused"
    listed = cos_cli("readside", "list", READ_SIDE, "--port", str(watcher.grpc_port))
    assert listed.returncode == 0, listed.stderr
    assert "member" in listed.stdout and runner in listed.stdout and "paused" in listed.stdout
    entity_id = entity_in_shard(shard, "paused")
    last = write(caller, entity_id, 1)
    other = entity_in_shard((shard + 1) % SHARDS, "running")
    other_last = write(caller, other, 1)
    deliveries.wait_until(
        lambda log: set(range(1, other_last + 1)) <= set(log.revisions(READ_SIDE, other)),
        DEADLINE_S,
        "the other shard's events",
    )
    time.sleep(1.0)  # a running projection would have delivered by now (commits wake it at once)
    assert deliveries.revisions(READ_SIDE, entity_id) == []

    manager_call(watcher, "ResumeReadSideByShard", shard)
    deliveries.wait_until(
        lambda log: set(range(1, last + 1)) <= set(log.revisions(READ_SIDE, entity_id)),
        DEADLINE_S,
        "the paused shard's events after the resume",
    )
    assert shard_members(caller)[shard][1] == "running"


def whole_call(node: Node, method: str) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """A whole-read-side manager call through `node`: (status, details, trailers)."""
    with grpc.insecure_channel(node.target) as channel:
        stub = ReadSideManagerServiceStub(channel)  # type: ignore[no-untyped-call]
        request = getattr(mpb, f"{method}Request")(read_side_id=READ_SIDE)
        try:
            _, call = getattr(stub, method).with_call(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details() or "", {}  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", {key: value for key, value in call.trailing_metadata()}


def trailer_shards(trailer: str) -> dict[str, set[int]]:
    """`running=0-2,4;paused=3` → {"running": {0, 1, 2, 4}, "paused": {3}}."""
    states: dict[str, set[int]] = {}
    for group in trailer.split(";"):
        state, runs = group.split("=")
        for run in runs.split(","):
            first, _, last = run.partition("-")
            states.setdefault(state, set()).update(range(int(first), int(last or first) + 1))
    return states


def test_a_whole_read_side_operation_changes_every_shard_or_none(
    cluster: Cluster, deliveries: DeliveryLog
) -> None:
    wait_for(lambda: settled(cluster.nodes[0], cluster.nodes), DEADLINE_S, "every projection placed")
    placement = shard_members(cluster.nodes[0])
    runs = {
        node.name: [s for s, (member, _) in placement.items() if member == address(node)]
        for node in cluster.nodes
    }
    # the caller runs projections of its own (held locally) and the stopped member runs others
    caller = next(node for node in cluster.nodes if runs[node.name])
    victim = next(node for node in cluster.nodes if node is not caller and runs[node.name])

    # Every member's answer lists every projection of the cluster, not only those it runs.
    for node in cluster.nodes:
        code, details, trailers = whole_call(node, "GetLatestOffset")
        assert code is grpc.StatusCode.OK, details
        assert trailer_shards(trailers["x-cos-read-side-state"]) == {"running": set(range(SHARDS))}

    victim.pause()  # SIGSTOP: its projections can be neither held nor reached
    try:
        code, details, _ = whole_call(caller, "PauseReadSide")
    finally:
        victim.resume()
    assert code is grpc.StatusCode.UNAVAILABLE, details
    assert "nothing was changed" in details and "shard" in details
    # Not one shard was paused: neither the caller's own nor a third member's.
    assert all(state != "paused" for _, state in shard_members(caller).values())
    entity_id = entity_in_shard(runs[caller.name][0], "after-refusal")
    last = write(caller, entity_id, 1)
    deliveries.wait_until(
        lambda log: set(range(1, last + 1)) <= set(log.revisions(READ_SIDE, entity_id)),
        DEADLINE_S,
        "the caller's own shard delivering after the refused pause",
    )

    # With every member answering, the whole read side is paused at once, and the answer says so.
    wait_for(lambda: settled(caller, cluster.nodes), DEADLINE_S, "every projection placed again")
    give_up_at = time.monotonic() + DEADLINE_S
    while True:
        code, details, trailers = whole_call(caller, "PauseReadSide")
        if code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up_at:
            break
        time.sleep(0.5)  # a lease still moving after the stopped member came back: retry, as told
    assert code is grpc.StatusCode.OK, details
    assert trailer_shards(trailers["x-cos-read-side-state"]) == {"paused": set(range(SHARDS))}
    for node in cluster.nodes:
        assert {state for _, state in shard_members(node).values()} == {"paused"}
    paused = {shard: entity_in_shard(shard, "while-paused") for shard in range(SHARDS)}
    lasts = {entity: write(cluster.nodes[shard % 3], entity, 1) for shard, entity in paused.items()}
    time.sleep(1.0)  # a running projection would have delivered by now (commits wake it at once)
    assert all(deliveries.revisions(READ_SIDE, entity) == [] for entity in paused.values())

    code, details, trailers = whole_call(victim, "ResumeReadSide")
    assert code is grpc.StatusCode.OK, details
    assert trailer_shards(trailers["x-cos-read-side-state"]) == {"running": set(range(SHARDS))}
    deliveries.wait_until(lambda log: all_delivered(log, lasts), DEADLINE_S, "every shard after the resume")

    # A whole restart replays every shard from its first event, wherever each projection runs.
    third = next(node for node in cluster.nodes if node is not caller and node is not victim)
    code, details, _ = whole_call(third, "RestartReadSide")
    assert code is grpc.StatusCode.OK, details
    deliveries.wait_until(
        lambda log: all(log.revisions(READ_SIDE, entity).count(1) >= 2 for entity in lasts),
        DEADLINE_S,
        "every shard replayed after the restart",
    )


def console_page(node: Node, path: str, form: bytes | None = None) -> tuple[int, str]:
    """A page of `node`'s admin console (docs/console.md); a form is posted as from the console itself."""
    origin = f"http://127.0.0.1:{node.management_port}"
    request = urllib.request.Request(
        f"{origin}/admin/{path}", data=form, headers={"Origin": origin} if form else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_console_maps_the_cluster_and_acts_where_a_projection_runs(cluster: Cluster) -> None:
    wait_for(lambda: settled(cluster.nodes[0], cluster.nodes), DEADLINE_S, "every projection placed")
    placement = shard_members(cluster.nodes[0])
    shard, (runner, _) = next(iter(sorted(placement.items())))
    caller = next(node for node in cluster.nodes if address(node) != runner)

    status, overview = console_page(caller, "")
    assert status == 200 and all(address(node) in overview for node in cluster.nodes)
    status, page = console_page(caller, "cluster")
    assert status == 200 and page.count("<tr") >= 1 + SHARDS + 1 + SHARDS  # both maps, with headers
    assert runner in page

    form = f"action=pause&read_side={READ_SIDE}&shard={shard}".encode()
    give_up_at = time.monotonic() + DEADLINE_S
    while (outcome := console_page(caller, "read-sides/act", form))[0] == 503:  # the lease is moving
        assert time.monotonic() < give_up_at, outcome
        time.sleep(0.5)
    assert outcome[0] == 200 and f"pause of shard {shard} of {READ_SIDE} done" in outcome[1]
    wait_for(
        lambda: shard_members(cluster.nodes[0])[shard][1] == "paused", DEADLINE_S, "paused where it runs"
    )
    manager_call(caller, "ResumeReadSideByShard", shard)
