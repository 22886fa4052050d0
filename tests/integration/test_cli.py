"""The `cos` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration


def cos(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chiefofstate", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "COS_DB_PATH": str(tmp_path / "fresh.db")}
    env.pop("COS_DB_HOST", None)
    first = cos("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "schema is up to date" in first.stdout
    assert (tmp_path / "fresh.db").exists()
    assert cos("migrate", env=env).returncode == 0


async def test_events_and_state_show_what_the_journal_holds(node_factory: NodeFactory) -> None:
    node = node_factory(COS_WRITE_PERSISTED_HEADERS="x-user")
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for command in (bank.open_account("Vi", 10), bank.deposit(5), bank.transfer_out(1, 1, "z")):
            await stub.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="cli-1", command=command),
                metadata=(("x-user", "vi"),),
                timeout=10,
            )
    events = cos("events", "cli-1", env=node.env)
    assert events.returncode == 0, events.stderr
    for expected in (
        "bank.v1.AccountOpened",
        "bank.v1.MoneyDeposited",
        "bank.v1.MoneyWithdrawn",
        "bank.v1.FeeCharged",
    ):
        assert expected in events.stdout
    assert "x-user=vi" in events.stdout
    state = cos("state", "cli-1", env=node.env)
    assert state.returncode == 0, state.stderr
    assert "type.googleapis.com/bank.v1.BankAccount" in state.stdout
    assert "revision" in state.stdout and " 4 " in state.stdout
    missing = cos("state", "nobody", env=node.env)
    assert missing.returncode == 1 and "no stored state" in missing.stdout
    assert cos("events", "nobody", env=node.env).returncode == 1


def test_demo_runs_the_whole_product_and_exits_0(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COS_")}
    result = cos("demo", env={**env, "TMPDIR": str(tmp_path)}, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every check held" in result.stdout
    assert "bank write handler (chiefofstate.sdk, gRPC) started" in result.stdout
    assert "state survived the restart" in result.stdout
    assert "FAILED_PRECONDITION" in result.stdout
