"""`cos serve --workers N` (docs/cluster.md, "Workers"): N cluster members on one machine sharing the
client-facing ports; and the SQLite rules, one node per file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.cluster import ClusterStatus, read_status
from chiefofstate.cli.processes import (
    Process,
    http_ok,
    node_environment,
    start_node,
    start_node_on_free_ports,
    workers_environment,
)
from chiefofstate.config.settings import load_settings
from chiefofstate.core.placement import owner, shard_key
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import base_env, postgres_env
from tests.support.postgres import PgServer

pytestmark = pytest.mark.integration

WORKERS = 2
DEADLINE_S = 90.0
POLL_S = 0.2
CONNECTIONS = 32  # enough that the kernel sends some to each worker (all to one: 2^-31)
ENTITIES = 4
DEPOSITS_PER_CONNECTION = 3
# Channels of one process share a connection unless each keeps its own subchannels.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@dataclass
class Workers:
    supervisor: Process
    env: dict[str, str]

    def started(self) -> list[tuple[int, int]]:
        """(index, pid) of every worker start, in order."""
        return [(int(i), int(pid)) for i, pid in _STARTED.findall(self.supervisor.log_text())]

    def pids(self) -> dict[int, int]:
        return dict(self.started())  # the latest start of each worker wins

    def port(self, name: str) -> int:
        return int(self.env[name])


def _is_worker(pid: int) -> bool:
    try:
        return b"chiefofstate" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def workers(tmp_path: Path, bank_handler: Process, pg_database: tuple[PgServer, str]) -> Iterator[Workers]:
    server, database = pg_database
    env = workers_environment(
        {**base_env(bank_handler.ports["grpc"]), **postgres_env(server, database)},
        WORKERS,
        COS_SERVER_PROTOCOL="both",
    )
    supervisor = start_node(
        env, tmp_path / "logs", name="cos-workers", serve_options=["--workers", str(WORKERS)]
    )
    running = Workers(supervisor, env)
    yield running
    if supervisor.alive():
        supervisor.stop()
    for _, pid in running.started():  # workers stop with their supervisor; make sure of it
        if _is_worker(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def serves_everything(status: ClusterStatus) -> bool:
    """Both workers are members and every shard is held by the one placement gives it to, so no
    handover is still under way."""
    member_ids = [member.member_id for member in status.members]
    placed = {shard: owner(shard_key(shard), member_ids) for shard in range(status.num_shards)}
    held = {shard: member_id for member_id in member_ids for shard in status.owned(member_id)[0]}
    return len(member_ids) == WORKERS and held == placed


async def settled(workers: Workers, gone: frozenset[str] = frozenset()) -> ClusterStatus:
    """The cluster once both workers are live members, none of them in `gone`, and together own every
    shard."""
    settings = load_settings(workers.env, require_write_side=False)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        assert workers.supervisor.alive(), workers.supervisor.log_text()
        status = await read_status(settings)
        renewed = not gone & {member.member_id for member in status.members}
        if renewed and serves_everything(status):
            return status
        assert time.monotonic() < deadline, (
            f"not settled: {status.as_json()}\n{workers.supervisor.log_text()}"
        )
        await asyncio.sleep(POLL_S)


def expected_addresses(workers: Workers) -> set[str]:
    cluster_port = workers.port("COS_CLUSTER_PORT")
    return {f"127.0.0.1:{cluster_port + index}" for index in range(WORKERS)}


async def deposits_from_many_connections(port: int, start_revision: int) -> None:
    """CONNECTIONS channels at once, each depositing in turn into one of ENTITIES accounts: every reply
    comes once, and each account's revisions are consecutive, without a gap or a repeat."""

    async def one_connection(number: int) -> list[tuple[str, int]]:
        entity = f"w-{number % ENTITIES}"
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            revisions = []
            for _ in range(DEPOSITS_PER_CONNECTION):
                reply = await cos.ProcessCommand(
                    pb.ProcessCommandRequest(entity_id=entity, command=bank.deposit(1)), timeout=20
                )
                revisions.append((entity, reply.meta.revision_number))
            return revisions

    replies = await asyncio.gather(*(one_connection(number) for number in range(CONNECTIONS)))
    per_entity = CONNECTIONS // ENTITIES * DEPOSITS_PER_CONNECTION
    for entity_number in range(ENTITIES):
        entity = f"w-{entity_number}"
        revisions = sorted(revision for batch in replies for name, revision in batch if name == entity)
        assert revisions == list(range(start_revision + 1, start_revision + per_entity + 1)), entity


async def open_accounts(port: int) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for number in range(ENTITIES):
            command = bank.open_account(f"W{number}", 0)
            request = pb.ProcessCommandRequest(entity_id=f"w-{number}", command=command)
            assert (await cos.ProcessCommand(request, timeout=20)).meta.revision_number == 1


async def every_entity_answers(port: int) -> None:
    """Every entity's state, read through CONNECTIONS connections (so through both workers, and both
    ways between them), until each read answers."""
    deadline = time.monotonic() + DEADLINE_S

    async def one_connection() -> None:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            for number in range(ENTITIES):
                while True:
                    try:
                        await cos.GetState(pb.GetStateRequest(entity_id=f"w-{number}"), timeout=20)
                        break
                    except aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                        assert time.monotonic() < deadline, error
                        await asyncio.sleep(POLL_S)

    await asyncio.gather(*(one_connection() for _ in range(CONNECTIONS)))


def commands_answered(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{")
        and 'grpc_method="ProcessCommand"' in line
        and 'grpc_code="OK"' in line
    )


def read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def cos_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chiefofstate", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_two_workers_are_members_share_the_ports_and_stop_together(workers: Workers) -> None:
    await settled(workers)
    shown = json.loads(cos_cli("cluster", "status", "--json", env=workers.env).stdout)
    assert {member["address"] for member in shown["members"]} == expected_addresses(workers)
    owned = [shard for member in shown["members"] for shard in member["shards"]]
    assert sorted(owned) == list(range(shown["num_shards"]))
    assert http_ok(f"http://127.0.0.1:{workers.port('COS_MANAGEMENT_PORT')}/ready")

    grpc_port = workers.port("COS_PORT")
    await open_accounts(grpc_port)
    await deposits_from_many_connections(grpc_port, start_revision=1)
    # Each worker answered some of the connections, and each is scraped on its own port.
    prometheus = workers.port("COS_PROMETHEUS_PORT")
    answered = [commands_answered(prometheus + index) for index in range(WORKERS)]
    assert all(count > 0 for count in answered), answered
    assert sum(answered) == ENTITIES + CONNECTIONS * DEPOSITS_PER_CONNECTION
    # The HTTP API is on a shared port too.
    http_port = workers.port("COS_HTTP_PORT")
    for number in range(ENTITIES):
        url = f"http://127.0.0.1:{http_port}/v1/entities/w-{number}/state"
        assert (await asyncio.to_thread(read_json, url))["meta"]["revision_number"] == 25

    pids = workers.pids()
    workers.supervisor.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(workers.supervisor.popen.wait, DEADLINE_S) == 0
    assert not any(_is_worker(pid) for pid in pids.values())
    assert workers.supervisor.log_text().count("stopped (exit code 0)") == WORKERS


async def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(workers: Workers) -> None:
    before = await settled(workers)
    worker_1 = f"127.0.0.1:{workers.port('COS_CLUSTER_PORT') + 1}"
    killed_member = next(member.member_id for member in before.members if member.address == worker_1)
    grpc_port = workers.port("COS_PORT")
    await open_accounts(grpc_port)
    killed = workers.pids()[1]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while workers.pids()[1] == killed:
        assert time.monotonic() < deadline, workers.supervisor.log_text()
        await asyncio.sleep(POLL_S)
    # The dead member's row looks live until its successor, at its address, takes its place.
    status = await settled(workers, gone=frozenset({killed_member}))
    assert {member.address for member in status.members} == expected_addresses(workers)
    # Requests that were waiting for the dead worker may fail with UNAVAILABLE, having written nothing
    # (docs/cluster.md); then every entity answers again.
    await every_entity_answers(grpc_port)
    await deposits_from_many_connections(grpc_port, start_revision=1)
    assert "worker 1 (pid" in workers.supervisor.log_text()  # its exit was logged


async def test_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    env = {**base_env(1), "COS_DB_PATH": str(tmp_path / "cos.db"), "LOG_LEVEL": "WARN"}
    refused = cos_cli("serve", "--workers", "2", env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "COS_WORKERS" in refused.stderr
    assert not (tmp_path / "cos.db").exists()


async def test_a_second_node_on_one_sqlite_file_is_refused_while_the_first_serves(
    tmp_path: Path, bank_handler: Process
) -> None:
    env = {**base_env(bank_handler.ports["grpc"]), "COS_DB_PATH": str(tmp_path / "cos.db")}
    first = start_node_on_free_ports(env, tmp_path / "logs")
    try:
        second = cos_cli("serve", env=node_environment({**env, "LOG_LEVEL": "WARN"}))
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0 and "COS_DB_PATH" in second.stderr
        assert str(first.popen.pid) in second.stderr
        migrate = cos_cli("migrate", env={**env, "LOG_LEVEL": "WARN"})
        assert migrate.returncode == 2 and "COS_DB_PATH" in migrate.stderr

        assert first.alive() and http_ok(f"http://127.0.0.1:{first.ports['management']}/ready")
        await open_accounts(first.ports["grpc"])
        assert cos_cli("events", "w-0", env=first.env).returncode == 0  # readers are not locked out
    finally:
        assert first.stop() == 0
    assert cos_cli("migrate", env=env).returncode == 0  # once the node stopped
