"""Operating read sides on real processes: ReadSideManagerService (docs/contract.md §6, decision D6), `cos
readside`,
autoStart, pause/restart/skip while events flow, a bad configuration, and kill -9 in the middle of a stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from chiefofstate.cli.processes import Process, node_environment, start_bank_read_handler
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from tests.integration.conftest import NodeFactory, base_env
from tests.support.owned import stop_all
from tests.support.readside_processes import (
    FAST,
    DeliveryLog,
    cos,
    cos_cli,
    manager,
    no_gap_in_order,
    open_and_deposit,
    read_side,
    revision_of,
    states,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("store_env", ["postgres"], indirect=True)


@pytest.fixture
def deliveries(tmp_path: Path) -> DeliveryLog:
    return DeliveryLog(tmp_path / "deliveries.jsonl")


@pytest.fixture
def read_handler(tmp_path: Path, deliveries: DeliveryLog) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(**hooks: str) -> Process:
        process = start_bank_read_handler(
            tmp_path / "logs",
            deliveries=deliveries.path,
            extra_env=hooks,
            name=f"read-handler-{len(started)}",
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        stop_all(started)


class Burst:
    """Commands from a background thread until stopped: `entities` accounts, one deposit at a time each."""

    def __init__(self, node: Process, entities: list[str]) -> None:
        self._node = node
        self._entities = entities
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        opened, stub = cos(self._node)
        with opened:
            while not self._stop.is_set():
                for entity_id in self._entities:
                    try:
                        open_and_deposit(stub, entity_id, deposits=1)
                    except grpc.RpcError as error:
                        self.errors.append(error)
                        return


@sqlite_only
def test_manager_rpcs_answer_not_found_invalid_argument_and_report_states(
    node_factory: NodeFactory, read_handler: Callable[..., Process]
) -> None:
    handler = read_handler()
    node = node_factory(**FAST, **read_side("balances", handler.ports["read_side"]))
    opened, _ = cos(node)
    with opened:
        stub = manager(opened)
        by_shard = {
            stub.GetLatestOffsetByShard: mpb.GetLatestOffsetByShardRequest,
            stub.RestartReadSideByShard: mpb.RestartReadSideByShardRequest,
            stub.PauseReadSideByShard: mpb.PauseReadSideByShardRequest,
            stub.ResumeReadSideByShard: mpb.ResumeReadSideByShardRequest,
            stub.SkipOffsetByShard: mpb.SkipOffsetByShardRequest,
        }
        for rpc, request in by_shard.items():
            with pytest.raises(grpc.RpcError) as caught:
                rpc(request(read_side_id="balances", cluster_shard_number=16), timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                rpc(request(read_side_id="ghost", cluster_shard_number=0), timeout=5)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            assert time.monotonic() - started < 1  # at once, not upstream's ~12 s
        reply, call = stub.PauseReadSideByShard.with_call(
            mpb.PauseReadSideByShardRequest(read_side_id="balances", cluster_shard_number=3), timeout=5
        )
        assert reply.successful
        assert dict(call.trailing_metadata())["x-cos-read-side-state"] == "paused=3"
        _, call = stub.GetLatestOffset.with_call(
            mpb.GetLatestOffsetRequest(read_side_id="balances"), timeout=5
        )
        assert dict(call.trailing_metadata())["x-cos-read-side-state"] == "running=0-2,4-15;paused=3"


@sqlite_only
def test_the_manager_is_unimplemented_when_read_sides_are_off(node_factory: NodeFactory) -> None:
    node = node_factory()
    opened, _ = cos(node)
    with opened, pytest.raises(grpc.RpcError) as caught:
        manager(opened).GetLatestOffset(mpb.GetLatestOffsetRequest(read_side_id="x"), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_a_bad_read_side_definition_stops_the_node_before_any_port_opens(
    tmp_path: Path, bank_handler: Process
) -> None:
    env = node_environment(
        {**base_env(bank_handler.ports["write_side"]), "COS_DB_PATH": str(tmp_path / "cos.db")},
        COS_READ_SIDE_ENABLED="true",
        COS_READ_SIDE_CONFIG__HOST__ledger="127.0.0.1",
        COS_READ_SIDE_CONFIG__PORT__ledger="80",
        COS_READ_SIDE_CONFIG__FAILURE_POLICY__ledger="RETRY_FOREVER",
    )
    result = subprocess.run(
        [sys.executable, "-m", "chiefofstate", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: COS_READ_SIDE_CONFIG__FAILURE_POLICY__ledger: "
        "readside ledger failurePolicy is invalid."
    ]
    assert not (tmp_path / "cos.db").exists()


@sqlite_only
@pytest.mark.timeout(300)  # nine `cos readside` processes, each a Python start-up on a busy machine
def test_cos_readside_commands_and_auto_start_false(
    node_factory: NodeFactory, read_handler: Callable[..., Process], deliveries: DeliveryLog
) -> None:
    handler = read_handler()
    node = node_factory(
        **FAST,
        **read_side("ledger", handler.ports["read_side"], AUTO_START="false"),
        **read_side("marker", handler.ports["read_side"]),  # started: shows deliveries had their time
    )
    port = ["--port", str(node.ports["grpc"])]
    opened, stub = cos(node)
    with opened:
        open_and_deposit(stub, "acc", deposits=2)
    shard = str(shard_of("acc", 16))
    listed = cos_cli("readside", "list", *port)
    assert listed.returncode == 0, listed.stderr
    assert "read side ledger" in listed.stdout and listed.stdout.count("paused") == 16
    deliveries.wait_until(lambda log: log.delivered("marker", "acc") == [1, 2, 3], what="the marker")
    assert deliveries.all("ledger") == []  # autoStart=false: paused on every shard at boot (§5.6)

    resumed = cos_cli("readside", "resume", "ledger", *port)
    assert resumed.returncode == 0 and "resumed read side ledger on every shard" in resumed.stdout
    deliveries.wait_until(lambda log: log.delivered("ledger", "acc") == [1, 2, 3], what="resumed")
    offsets = cos_cli("readside", "offsets", "ledger", "--shard", shard, *port)
    assert offsets.returncode == 0, offsets.stderr
    assert "offset" in offsets.stdout and "running" in offsets.stdout

    one = cos_cli("readside", "list", "ledger", "--shard", shard, *port)
    row = next(line for line in one.stdout.splitlines() if line.strip().startswith("│") and "running" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[0] == shard and cells[1] == cells[2] and cells[3] == "0"  # caught up: offset = head, lag 0

    listed = json.loads(cos_cli("readside", "list", "ledger", "--shard", shard, "--json", *port).stdout)
    [status] = listed["read_sides"]
    assert status["read_side_id"] == "ledger"
    [shard_status] = status["shards"]
    assert shard_status["state"] == "running" and shard_status["lag"] == 0
    assert shard_status["offset"] == shard_status["journal_offset"]

    # Replaying everything cannot be undone: without a terminal to ask on, --yes is required.
    unconfirmed = cos_cli("readside", "restart", "ledger", "--shard", shard, *port)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    before_restart = len(deliveries.revisions("ledger", "acc"))
    restarted = cos_cli("readside", "restart", "ledger", "--shard", shard, "--yes", *port)
    assert restarted.returncode == 0, restarted.stderr

    def replayed_from_the_start(log: DeliveryLog) -> bool:
        # 1, 2, 3 in this order among the deliveries since the restart; redeliveries may come between.
        since = iter(log.revisions("ledger", "acc")[before_restart:])
        return all(revision in since for revision in (1, 2, 3))

    deliveries.wait_until(replayed_from_the_start, what="replayed from the start")
    paused = cos_cli("readside", "pause", "ledger", "--shard", shard, *port)
    assert paused.returncode == 0 and "paused" in paused.stdout

    missing = cos_cli("readside", "pause", "nope", *port)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stdout
    wrong_shard = cos_cli("readside", "skip", "ledger", "--shard", "16", "--yes", *port)
    assert wrong_shard.returncode == 1 and "INVALID_ARGUMENT" in wrong_shard.stdout


@sqlite_only
def test_pause_during_a_burst_stops_deliveries_until_resumed(
    node_factory: NodeFactory, read_handler: Callable[..., Process], deliveries: DeliveryLog
) -> None:
    handler = read_handler()
    node = node_factory(
        **FAST,
        **read_side("feed", handler.ports["read_side"]),
        **read_side("marker", handler.ports["read_side"]),  # never paused: shows events kept flowing
    )
    entities = [f"burst-{number}" for number in range(6)]
    opened, stub = cos(node)
    with opened, Burst(node, entities) as burst:
        deliveries.wait_until(lambda log: len(log.all("feed")) > 10, what="deliveries during the burst")
        manager(opened).PauseReadSide(mpb.PauseReadSideRequest(read_side_id="feed"), timeout=10)
        time.sleep(0.2)  # a call that was in flight when the pause landed may still be logged
        seen, marked = len(deliveries.all("feed")), len(deliveries.all("marker"))
        deliveries.wait_until(
            lambda log: len(log.all("marker")) >= marked + 10,
            timeout_s=60,
            what="10 more deliveries to the marker",
        )
        assert len(deliveries.all("feed")) == seen
        assert set(states(node, "feed").values()) == {"paused"}
        manager(opened).ResumeReadSide(mpb.ResumeReadSideRequest(read_side_id="feed"), timeout=10)
        time.sleep(0.3)
        burst.stop()
        assert burst.errors == []
        final = {entity: revision_of(stub, entity) for entity in entities}
    deliveries.wait_until(
        lambda log: all(max(log.revisions("feed", e), default=0) == final[e] for e in entities),
        what="caught up",
    )
    for entity in entities:
        assert no_gap_in_order(deliveries.revisions("feed", entity))


@postgres_only
def test_restart_and_skip_while_events_flow(
    node_factory: NodeFactory, read_handler: Callable[..., Process], deliveries: DeliveryLog
) -> None:
    handler = read_handler(BANK_READ_FAIL="flow-0@5")
    node = node_factory(**FAST, **read_side("flow", handler.ports["read_side"]))
    entities = [f"flow-{number}" for number in range(4)]
    stuck_shard = shard_of("flow-0", 16)
    opened, stub = cos(node)
    with opened, Burst(node, entities) as burst:
        wait_for(lambda: states(node, "flow")[stuck_shard] == "halted", what="halted on flow-0@5")
        manager(opened).SkipOffsetByShard(
            mpb.SkipOffsetByShardRequest(read_side_id="flow", cluster_shard_number=stuck_shard), timeout=10
        )
        deliveries.wait_until(lambda log: 6 in log.revisions("flow", "flow-0"), what="past the skipped event")
        manager(opened).RestartReadSide(mpb.RestartReadSideRequest(read_side_id="flow"), timeout=10)
        time.sleep(0.5)
        burst.stop()
        assert burst.errors == []
        final = {entity: revision_of(stub, entity) for entity in entities}
    # The restart replays every shard from its oldest event, so flow-0@5 fails again and halts it again.
    wait_for(lambda: states(node, "flow")[stuck_shard] == "halted", what="halted again after the restart")
    others = [entity for entity in entities if shard_of(entity, 16) != stuck_shard]
    deliveries.wait_until(
        lambda log: all(max(log.revisions("flow", e), default=0) == final[e] for e in others),
        what="caught up",
    )
    for entity in others:
        revisions = deliveries.revisions("flow", entity)
        assert no_gap_in_order(revisions) and revisions.count(1) == 2  # delivered, then replayed
    # flow-0: 1-4, revision 5 skipped by the operator, 6 onwards, then the replay from 1 halts at 5 again.
    flow0 = deliveries.revisions("flow", "flow-0")
    assert flow0 == [1, 2, 3, 4, *range(6, max(flow0) + 1), 1, 2, 3, 4]


def test_kill_9_in_the_middle_of_a_stream_loses_and_reorders_nothing(
    node_factory: NodeFactory, read_handler: Callable[..., Process], deliveries: DeliveryLog
) -> None:
    handler = read_handler(BANK_READ_DELAY_MS="3")  # keeps a backlog so the kill lands mid-stream
    env = {
        **FAST,
        "COS_READ_SIDE_COMMIT_BATCH": "5",
        "COS_READ_SIDE_COMMIT_INTERVAL": "1s",
        **read_side("ledger", handler.ports["read_side"]),
    }
    node = node_factory(**env)
    entities = [f"kill-{number}" for number in range(8)]
    with Burst(node, entities):
        deliveries.wait_until(lambda log: len(log.all()) > 40, what="a stream in progress")
        node.kill()
    restarted = node_factory(**env, COS_CLUSTER_PORT=node.env["COS_CLUSTER_PORT"])  # restarted in place
    opened, stub = cos(restarted)
    with opened:
        final = {entity: revision_of(stub, entity) for entity in entities}
    assert all(revision > 3 for revision in final.values())
    deliveries.wait_until(
        lambda log: all(max(log.revisions("ledger", e), default=0) == final[e] for e in entities),
        timeout_s=30,
        what="every committed event delivered after the restart",
    )
    duplicates = 0
    for entity in entities:
        revisions = deliveries.revisions("ledger", entity)
        assert no_gap_in_order(revisions), f"{entity}: {revisions}"
        assert set(revisions) == set(range(1, final[entity] + 1))
        duplicates += len(revisions) - len(set(revisions))
    print(f"kill -9: {duplicates} events delivered twice (at-least-once), none lost or out of order")


@sqlite_only
def test_kill_9_while_the_read_handler_holds_an_event_delivers_it_again_after_the_restart(
    node_factory: NodeFactory, read_handler: Callable[..., Process], deliveries: DeliveryLog
) -> None:
    """At-least-once: the offset of an event is stored only once its handler has answered. The read
    handler holds the first delivery of held@2 unanswered; the node is killed inside that window, after
    its committer (every 20 ms here) has had many chances to store a position recorded too early. The
    restarted node must deliver held@2 again, then held@3."""
    handler = read_handler(BANK_READ_HOLD="ledger/held@2")
    env = {**FAST, **read_side("ledger", handler.ports["read_side"])}
    node = node_factory(**env)
    opened, stub = cos(node)
    with opened:
        assert open_and_deposit(stub, "held", deposits=2) == 3
    deliveries.wait_until(lambda log: log.revisions("ledger", "held", outcome="held") == [2], what="held@2")
    assert deliveries.delivered("ledger", "held") == [1]
    time.sleep(1.5)  # the window: 75 commit intervals with held@2 in the handler's hands
    assert deliveries.revisions("ledger", "held", outcome=None) == [1, 2]  # still held, nothing after it
    node.kill()

    node_factory(**env)  # the same store; the handler keeps running
    deliveries.wait_until(
        lambda log: log.delivered("ledger", "held") == [1, 2, 3], what="held@2 delivered again, then held@3"
    )
    assert deliveries.revisions("ledger", "held", outcome="ok").count(2) == 1  # after the held attempt
