"""Read sides with real processes: `cos serve`, the example read handler (gRPC and HTTP) and both stores.

Delivery in order with state, meta and headers; a read handler that is down, hangs, fails or says
`successful=false`; every failure policy; halts that survive a restart (decision D7); and a slow read
handler that must not slow the write path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank

from chiefofstate.cli.processes import Process, free_port, start_bank_read_handler
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from tests.integration.conftest import NodeFactory
from tests.support.owned import stop_all
from tests.support.readside_processes import (
    FAST,
    DeliveryLog,
    cos,
    cos_cli,
    manager,
    open_and_deposit,
    read_side,
    states,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ReadHandlerFactory = Callable[..., Process]
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)


@pytest.fixture
def deliveries(tmp_path: Path) -> DeliveryLog:
    return DeliveryLog(tmp_path / "deliveries.jsonl")


@pytest.fixture
def read_handler(tmp_path: Path, deliveries: DeliveryLog) -> Iterator[ReadHandlerFactory]:
    """Starts example read handlers appending to the test's delivery log; all stopped at the end."""
    started: list[Process] = []

    def start(port: int | None = None, http: bool = False, **hooks: str) -> Process:
        process = start_bank_read_handler(
            tmp_path / "logs",
            port,
            http=http,
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


@sqlite_only
def test_one_read_handler_serving_two_read_sides_is_told_which_side_each_event_is_for(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    # the example's `@handles` method takes the read side id (the SDK's fifth parameter) and logs it
    shared = read_handler()
    node = node_factory(
        **FAST,
        **read_side("balances", shared.ports["read_side"]),
        **read_side("audit", shared.ports["read_side"]),
    )
    opened, stub = cos(node)
    with opened:
        last = open_and_deposit(stub, "shared-1", deposits=2)
    deliveries.wait_until(
        lambda log: all(log.revisions(side, "shared-1")[-1:] == [last] for side in ("balances", "audit")),
        what="every event on both read sides",
    )
    for side in ("balances", "audit"):
        assert deliveries.revisions(side, "shared-1") == list(range(1, last + 1))
    assert {delivery.read_side_id for delivery in deliveries.all()} == {"balances", "audit"}


def test_events_reach_grpc_and_http_read_handlers_in_order_with_state_meta_and_headers(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    grpc_handler = read_handler()
    http_handler = read_handler(http=True)
    node = node_factory(
        **FAST,
        **read_side("balances", grpc_handler.ports["read_side"]),
        **read_side("audit", http_handler.ports["read_side"], PROTOCOL="http"),
    )
    accounts = [f"acct-{number}" for number in range(6)]
    expected = {}
    opened, stub = cos(node)
    with opened:
        for account in accounts:
            expected[account] = open_and_deposit(stub, account, deposits=3)
        transfer = stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="acct-0", command=bank.transfer_out(10, 1, "acct-1")),
            timeout=10,
        )
        expected["acct-0"] = transfer.meta.revision_number  # two events from one command (D1)
    deliveries.wait_until(
        lambda log: all(
            log.revisions(side, account)[-1:] == [expected[account]]
            for side in ("balances", "audit")
            for account in accounts
        ),
        what="every event on both read sides",
    )
    for side in ("balances", "audit"):
        for account in accounts:
            assert deliveries.revisions(side, account) == list(range(1, expected[account] + 1))
        for delivery in deliveries.all(side):
            assert delivery.tag == str(shard_of(delivery.entity_id, 16))
            assert delivery.header_entity_id == delivery.entity_id
            assert delivery.event_type.startswith("type.googleapis.com/bank.v1.")
    final = [d for d in deliveries.all("audit") if d.entity_id == "acct-0"][-1]
    assert final.event_type.endswith("FeeCharged") and final.balance == 100 + 3 - 10 - 1
    with channel_to(node) as opened:
        reply = manager(opened).GetLatestOffset(
            mpb.GetLatestOffsetRequest(read_side_id="balances"), timeout=10
        )
    assert [offset.cluster_shard_number for offset in reply.offsets] == list(range(16))
    wait_for(lambda: all(state == "running" for state in states(node, "balances").values()), what="running")


def channel_to(node: Process) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{node.ports['grpc']}")


def test_a_read_handler_down_at_start_is_caught_up_once_it_is_back(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    port = free_port()
    node = node_factory(
        # 2 s between attempts: a handler process can take several seconds to start on a busy machine.
        **{**FAST, "COS_READ_SIDE_REPLAY_DELAY": "2s"},
        **read_side("patient", port, FAILURE_POLICY="REPLAY_STOP", TIMEOUT="1000"),
        # STOP, the default: halts once a call has waited its whole timeout for the absent handler
        **read_side("strict", port, TIMEOUT="1500"),
    )
    opened, stub = cos(node)
    with opened:
        revision = open_and_deposit(stub, "early", deposits=2)
        shard = shard_of("early", 16)
        wait_for(lambda: states(node, "strict")[shard] == "halted", what="strict halted")
        read_handler(port)  # back within REPLAY_STOP's six attempts (each waits up to 1 s, 2 s apart)
        deliveries.wait_until(lambda log: log.delivered("patient", "early") == [1, 2, 3], what="patient")
        assert states(node, "patient")[shard] == "running"
        assert deliveries.revisions("strict", "early") == []
        manager(opened).ResumeReadSideByShard(
            mpb.ResumeReadSideByShardRequest(read_side_id="strict", cluster_shard_number=shard), timeout=10
        )
        deliveries.wait_until(
            lambda log: log.delivered("strict", "early") == [1, 2, 3], what="strict resumed"
        )
        assert open_and_deposit(stub, "early", deposits=1) == revision + 1
        deliveries.wait_until(
            lambda log: log.delivered("strict", "early")[-1] == revision + 1, what="new event"
        )


@sqlite_only
def test_a_hanging_read_handler_times_out_and_the_policy_applies(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    handler = read_handler(BANK_READ_HANG="stuck@2")
    node = node_factory(
        **FAST, **read_side("skipper", handler.ports["read_side"], FAILURE_POLICY="SKIP", TIMEOUT="300")
    )
    opened, stub = cos(node)
    with opened:
        open_and_deposit(stub, "stuck", deposits=2)
        started = time.monotonic()
        deliveries.wait_until(
            lambda log: log.delivered("skipper", "stuck") == [1, 3], what="skip past the hang"
        )
        # The read side's 300 ms timeout ended the hung call, not the 30 s default (generous for a busy
        # machine, well below the default).
        assert time.monotonic() - started < 20
    assert deliveries.revisions("skipper", "stuck", outcome="hang") == [2]  # one attempt under SKIP


POLICIES = {"stop": "STOP", "skip": "SKIP", "replayskip": "REPLAY_SKIP", "replaystop": "REPLAY_STOP"}


@pytest.mark.timeout(300)  # two node starts and six replays at 100 ms; slow on a busy machine
def test_every_failure_policy_on_an_event_that_always_fails_and_halts_survive_a_restart(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    handler = read_handler(BANK_READ_FAIL="poison@2")
    port = handler.ports["read_side"]
    env = {
        **FAST,
        **{
            k: v
            for name, policy in POLICIES.items()
            for k, v in read_side(name, port, FAILURE_POLICY=policy).items()
        },
    }
    node = node_factory(**env)
    shard = shard_of("poison", 16)
    opened, stub = cos(node)
    with opened:
        open_and_deposit(stub, "poison", deposits=2)  # revisions 1, 2 (always fails), 3
        open_and_deposit(stub, "healthy", deposits=1)
        deliveries.wait_until(
            lambda log: (
                log.delivered("skip", "poison") == [1, 3] and log.delivered("replayskip", "poison") == [1, 3]
            ),
            what="the skipping policies to move on",
        )
        wait_for(
            lambda: states(node, "stop")[shard] == "halted" and states(node, "replaystop")[shard] == "halted",
            what="the stopping policies to halt",
        )
    # Other shards, other entities go on (their deliveries run on their own, so they are waited for).
    deliveries.wait_until(
        lambda log: all(2 in log.revisions(name, "healthy") for name in ("stop", "replaystop")),
        what="the halted read sides' other shards delivering",
    )
    attempts = {name: deliveries.revisions(name, "poison", outcome="failed") for name in POLICIES}
    assert attempts == {"stop": [2], "skip": [2], "replayskip": [2] * 6, "replaystop": [2] * 6}
    for name in ("stop", "replaystop"):
        assert deliveries.delivered(name, "poison") == [1]
    assert "halted on event ordering" in node.log_text()

    # Decision D7: a restart does not un-halt them, and nothing is attempted again.
    node.stop()
    restarted = node_factory(**env)
    wait_for(lambda: states(restarted, "stop")[shard] == "halted", what="halted after the restart")
    assert states(restarted, "replaystop")[shard] == "halted"
    assert "stays halted until an operator acts" in restarted.log_text()
    # The positive counterpart: the restarted node's projections of both read sides run (a new event of
    # another shard arrives), and still the halted shard attempted nothing.
    restarted_channel, restarted_stub = cos(restarted)
    with restarted_channel:
        assert open_and_deposit(restarted_stub, "healthy", deposits=1) == 3
    deliveries.wait_until(
        lambda log: 3 in log.revisions("stop", "healthy") and 3 in log.revisions("replaystop", "healthy"),
        what="the restarted node's other shards delivering",
    )
    assert deliveries.revisions("stop", "poison", outcome="failed") == [2]
    assert deliveries.revisions("replaystop", "poison", outcome="failed") == [2] * 6

    # The operator skips the stuck event with the CLI; delivery goes on with revision 3.
    result = cos_cli(
        "readside", "skip", "stop", "--shard", str(shard), "--yes", "--port", str(restarted.ports["grpc"])
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "skipped the next event of read side stop on shard" in result.stdout
    deliveries.wait_until(lambda log: log.delivered("stop", "poison") == [1, 3], what="stop after the skip")
    assert states(restarted, "stop")[shard] == "running"


@sqlite_only
def test_successful_false_is_a_failed_delivery(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog
) -> None:
    handler = read_handler(BANK_READ_REFUSE="picky@1")
    port = handler.ports["read_side"]
    node = node_factory(
        **FAST,
        COS_READ_SIDE_BREAKER_ENABLED="true",
        COS_READ_SIDE_BREAKER_MAX_FAILURES="1",
        **read_side("lenient", port, FAILURE_POLICY="SKIP"),
        **read_side("strict", port),
    )
    opened, stub = cos(node)
    with opened:
        open_and_deposit(stub, "picky", deposits=1)
        deliveries.wait_until(lambda log: log.delivered("lenient", "picky") == [2], what="skipped refusal")
        wait_for(lambda: states(node, "strict")[shard_of("picky", 16)] == "halted", what="strict halted")
        # successful=false does not trip the breaker: a later event still reaches the handler.
        open_and_deposit(stub, "another", deposits=0)
        deliveries.wait_until(lambda log: log.delivered("lenient", "another") == [1], what="breaker closed")


@sqlite_only
def test_a_slow_read_handler_does_not_slow_the_write_path(
    node_factory: NodeFactory, read_handler: ReadHandlerFactory, deliveries: DeliveryLog, tmp_path: Path
) -> None:
    # 3 s per delivery: at most 16 shards / 3 s ≈ 5 events/s, so the read side stays far behind the
    # commands below however slowly a busy machine runs them (240 commands would need over 45 s each).
    slow = read_handler(BANK_READ_DELAY_MS="3000")
    plain = node_factory(COS_DB_PATH=str(tmp_path / "plain.db"))
    busy = node_factory(**FAST, **read_side("slow", slow.ports["read_side"]))
    latencies: dict[str, list[float]] = {"plain": [], "busy": []}
    plain_channel, plain_stub = cos(plain)
    busy_channel, busy_stub = cos(busy)
    with plain_channel, busy_channel:
        stubs = {"plain": plain_stub, "busy": busy_stub}
        for number in range(8):
            for stub in stubs.values():
                open_and_deposit(stub, f"account-{number}")
        # Alternating between the two nodes, so a busy moment of the machine weighs on both alike.
        for _ in range(15):
            for number in range(8):
                for name, stub in stubs.items():
                    started = time.perf_counter()
                    stub.ProcessCommand(
                        pb.ProcessCommandRequest(entity_id=f"account-{number}", command=bank.deposit(1)),
                        timeout=10,
                    )
                    latencies[name].append((time.perf_counter() - started) * 1000)
    without, with_slow = statistics.median(latencies["plain"]), statistics.median(latencies["busy"])
    assert len(deliveries.all("slow")) < 8 * 16  # the read side is far behind while commands flow
    # Medians of interleaved calls, compared within the run; generous for a shared two-core machine.
    assert with_slow < without * 2 + 5, f"median command latency {without:.2f} ms → {with_slow:.2f} ms"
    print(f"median command latency without read sides {without:.2f} ms, with a slow one {with_slow:.2f} ms")
