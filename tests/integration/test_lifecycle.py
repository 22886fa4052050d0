"""Start-up, shutdown, crashes, health, and a database that goes away."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chiefofstate.cli.processes import (
    Process,
    free_port,
    node_environment,
    spawn,
    start_bank_write_handler,
    start_node,
    wait_for,
)
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory, base_env, postgres_env
from tests.support.postgres import ThrowawayServer, throwaway_server

pytestmark = pytest.mark.integration


def stub(port: int) -> tuple[aio.Channel, ChiefOfStateServiceStub]:
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


async def deposit(cos: ChiefOfStateServiceStub, entity: str, amount: int) -> pb.ProcessCommandResponse:
    reply: pb.ProcessCommandResponse = await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id=entity, command=bank.deposit(amount)), timeout=10
    )
    return reply


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COS_NUM_SHARDS", "12"),
        ("LOG_STYLE", "PRETTY"),
        ("COS_PORT", "99999"),
        ("COS_WRITE_SIDE_PROTOCOL", "both"),
        ("COS_WRITE_SIDE_PORT", "-1"),
        ("COS_SNAPSHOT_FREQUENCY", "-5"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line_before_opening_any_port(
    variable: str, value: str
) -> None:
    grpc_port, management_port = free_port(), free_port()
    env = {
        **base_env(1),
        "COS_PORT": str(grpc_port),
        "COS_MANAGEMENT_PORT": str(management_port),
        variable: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "chiefofstate", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
    assert port_is_closed(grpc_port) and port_is_closed(management_port)


def test_an_unreachable_database_at_start_fails_after_bounded_retries(tmp_path: Path) -> None:
    env = {
        **base_env(1),
        "COS_DB_HOST": "127.0.0.1",
        "COS_DB_PORT": str(free_port()),
        "COS_DB_STARTUP_RETRIES": "2",
        "COS_DB_CONNECT_TIMEOUT": "1s",
        "COS_PORT": str(free_port()),
        "COS_MANAGEMENT_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "chiefofstate", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr.lower() or "unreachable" in result.stdout.lower()
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("moment", ["right after spawning it", "while it retries the store"])
def test_sigterm_during_start_up_stops_the_node_promptly(tmp_path: Path, moment: str) -> None:
    """A worker told to stop while it starts must exit, not finish a start that can take minutes (here
    a store that refuses connections, retried 1,000 times)."""
    env = {
        **base_env(1),
        "COS_DB_HOST": "127.0.0.1",
        "COS_DB_PORT": str(free_port()),
        "COS_DB_STARTUP_RETRIES": "1000",
        "COS_DB_CONNECT_TIMEOUT": "1s",
        "COS_PORT": str(free_port()),
        "COS_MANAGEMENT_PORT": str(free_port()),
    }
    process = spawn("cos-node", [sys.executable, "-m", "chiefofstate", "serve"], env, tmp_path)
    try:
        if moment == "while it retries the store":
            wait_for("retrying", process, lambda: "(attempt 2 of 1001)" in process.log_text(), 60)
        process.popen.send_signal(signal.SIGTERM)
        code = process.popen.wait(timeout=30)
        # Before Python installs its handler the default action ends it (-SIGTERM); after, it exits 0.
        assert code in (0, -signal.SIGTERM), process.log_text()
        if moment == "while it retries the store":
            assert code == 0 and "start-up abandoned" in process.log_text()
    finally:
        process.kill()


async def test_health_reflection_and_management_endpoints(node: Process) -> None:
    management = f"http://127.0.0.1:{node.ports['management']}"
    assert http_status(f"{management}/alive") == 200
    assert http_status(f"{management}/ready") == 200
    assert http_status(f"{management}/nope") == 404
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "chief_of_state.v1.ChiefOfStateService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in responses:
            names = {service.name for service in response.list_services_response.service}
            assert "chief_of_state.v1.ChiefOfStateService" in names
            break


async def test_acknowledged_commands_survive_kill_9(node_factory: NodeFactory) -> None:
    node = node_factory()
    channel, cos = stub(node.ports["grpc"])
    async with channel:
        await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="k-1", command=bank.open_account("K", 0)), timeout=10
        )
        acknowledged = [await deposit(cos, "k-1", 1) for _ in range(20)]
    node.kill()
    # Restarted in place, on the same ports: in cluster mode (PostgreSQL) the new process takes over
    # its predecessor's address and with it, at once, the shards the killed process held.
    restarted = node_factory(
        COS_PORT=node.env["COS_PORT"],
        COS_MANAGEMENT_PORT=node.env["COS_MANAGEMENT_PORT"],
        COS_CLUSTER_PORT=node.env["COS_CLUSTER_PORT"],
    )
    channel, cos = stub(restarted.ports["grpc"])
    async with channel:
        state = await cos.GetState(pb.GetStateRequest(entity_id="k-1"), timeout=10)
        assert state.meta.revision_number == acknowledged[-1].meta.revision_number == 21
        assert bank.account_from_any(state.state).balance == 20
        assert (await deposit(cos, "k-1", 1)).meta.revision_number == 22


async def test_sigterm_finishes_in_flight_commands_and_exits_0(
    node_factory: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    slow = start_bank_write_handler(
        tmp_path_factory.mktemp("slow"), extra_env={"BANK_HANDLER_DELAY_MS": "1000"}
    )
    try:
        node = node_factory(COS_WRITE_SIDE_PORT=str(slow.ports["grpc"]))
        channel, cos = stub(node.ports["grpc"])
        async with channel:
            in_flight = asyncio.ensure_future(
                cos.ProcessCommand(
                    pb.ProcessCommandRequest(entity_id="t-1", command=bank.open_account("T", 7)), timeout=10
                )
            )
            await asyncio.sleep(0.3)  # the command is now waiting on the slow handler
            started = time.monotonic()
            node.popen.terminate()
            reply = await in_flight
            assert reply.meta.revision_number == 1
        exit_code = await asyncio.to_thread(node.popen.wait, 30)
        assert exit_code == 0 and time.monotonic() - started < 25
        assert "stopped" in node.log_text()
    finally:
        slow.stop()


@pytest.fixture
def private_postgres() -> Iterator[ThrowawayServer]:
    with throwaway_server() as server:
        yield server


async def test_database_outage_gives_unavailable_and_the_node_recovers_without_restart(
    tmp_path: Path, bank_handler: Process, private_postgres: ThrowawayServer
) -> None:
    env = node_environment(
        {**base_env(bank_handler.ports["grpc"]), **postgres_env(private_postgres.server, "postgres")},
        COS_DB_CONNECT_TIMEOUT="1s",
    )
    node = start_node(env, tmp_path / "logs")
    try:
        channel, cos = stub(node.ports["grpc"])
        async with channel:
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="o-1", command=bank.open_account("O", 0)), timeout=10
            )
            await deposit(cos, "o-1", 1)
            private_postgres.stop()
            with pytest.raises(aio.AioRpcError) as caught:
                await deposit(cos, "o-1", 1)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            # Where the database is stays in the node's log; the caller only learns it is unavailable.
            assert caught.value.details() == "the store is unavailable"
            assert f"127.0.0.1:{private_postgres.server.port}/" in node.log_text()
            assert http_status(f"http://127.0.0.1:{node.ports['management']}/ready") == 503
            private_postgres.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await deposit(cos, "o-1", 1)
                    break
                except aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            # the failed command wrote nothing: revision 3 follows 2
            assert reply.meta.revision_number == 3
            assert bank.account_from_any(reply.state).balance == 2
            assert http_status(f"http://127.0.0.1:{node.ports['management']}/ready") == 200
    finally:
        node.stop()
