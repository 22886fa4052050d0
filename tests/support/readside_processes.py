"""Helpers for read-side tests with real processes: read-side variables, the example read handler's
delivery log, commands, and the manager and admin stubs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from chiefofstate_examples.bank import client as bank

from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc import ReadSideManagerServiceStub
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.gen.chiefofstate.internal.v1.readside_admin_pb2_grpc import ReadSideAdminServiceStub

# Short intervals so tests take seconds, set through the project's own variables (README).
FAST = {
    "COS_READ_SIDE_ENABLED": "true",
    "COS_READ_SIDE_REPLAY_DELAY": "100ms",
    "COS_READ_SIDE_POLL_INTERVAL": "1s",
    "COS_READ_SIDE_COMMIT_INTERVAL": "20ms",
    "COS_READ_SIDE_RESTART_MIN_BACKOFF": "100ms",
    "COS_READ_SIDE_RESTART_MAX_BACKOFF": "500ms",
}


def read_side(read_side_id: str, port: int, **settings: str) -> dict[str, str]:
    """COS_READ_SIDE_CONFIG__<SETTING>__<ID> variables; settings by their variable names (TIMEOUT=…)."""
    env = {
        f"COS_READ_SIDE_CONFIG__HOST__{read_side_id}": "127.0.0.1",
        f"COS_READ_SIDE_CONFIG__PORT__{read_side_id}": str(port),
    }
    env.update({f"COS_READ_SIDE_CONFIG__{name}__{read_side_id}": value for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class Delivery:
    read_side_id: str
    entity_id: str
    revision: int
    tag: str
    header_entity_id: str
    event_type: str
    balance: int | None
    outcome: str
    received_at: float
    revision_date: float


def first_deliveries(revisions: list[int]) -> list[int]:
    """`revisions` with every redelivery removed (first occurrences, in order)."""
    return list(dict.fromkeys(revisions))


class DeliveryLog:
    """The lines the example read handler appends, one per call it received."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self, read_side_id: str | None = None) -> list[Delivery]:
        if not self.path.exists():
            return []
        deliveries = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            raw = json.loads(line)
            delivery = Delivery(
                raw["read_side_id"],
                raw["entity_id"],
                raw["revision"],
                raw["x_cos_event_tag"],
                raw["x_cos_entity_id"],
                raw["event_type"],
                raw["balance"],
                raw["outcome"],
                raw["received_at"],
                raw["revision_date"],
            )
            if read_side_id is None or delivery.read_side_id == read_side_id:
                deliveries.append(delivery)
        return deliveries

    def revisions(self, read_side_id: str, entity_id: str, outcome: str | None = "ok") -> list[int]:
        return [
            d.revision
            for d in self.all(read_side_id)
            if d.entity_id == entity_id and (outcome is None or d.outcome == outcome)
        ]

    def delivered(self, read_side_id: str, entity_id: str) -> list[int]:
        """The revisions delivered successfully, each at its first delivery: what an at-least-once
        stream promises (every event, in order) without the redeliveries it allows (docs/contract.md
        §5.4). Tests compare this, never `revisions`, with the events they expect."""
        return first_deliveries(self.revisions(read_side_id, entity_id))

    def wait_until(
        self, check: Callable[[DeliveryLog], bool], timeout_s: float = 20.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or 'deliveries'}; log:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 40) -> str:
        if not self.path.exists():
            return "(no deliveries)"
        return "\n".join(self.path.read_text().splitlines()[-lines:])


def no_gap_in_order(revisions: Iterable[int]) -> bool:
    """At-least-once in order: redeliveries may go back, but no delivery jumps past an undelivered one."""
    highest = 0
    for revision in revisions:
        if revision > highest + 1:
            return False
        highest = max(highest, revision)
    return True


def channel(node: Process) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{node.ports['grpc']}")


def open_and_deposit(stub: ChiefOfStateServiceStub, entity_id: str, deposits: int = 0) -> int:
    """Open the account (if it is new) and deposit 1 cent `deposits` times; returns the last revision."""
    revision = 0
    try:
        reply = stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=entity_id, command=bank.open_account(entity_id, 100)),
            timeout=10,
        )
        revision = reply.meta.revision_number
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
            raise
    for _ in range(deposits):
        reply = stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=entity_id, command=bank.deposit(1)), timeout=10
        )
        revision = reply.meta.revision_number
    return revision


def revision_of(stub: ChiefOfStateServiceStub, entity_id: str) -> int:
    try:
        reply = stub.GetState(pb.GetStateRequest(entity_id=entity_id), timeout=10)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return 0
        raise
    return int(reply.meta.revision_number)


def cos(node: Process) -> tuple[grpc.Channel, ChiefOfStateServiceStub]:
    opened = channel(node)
    return opened, ChiefOfStateServiceStub(opened)  # type: ignore[no-untyped-call]


def manager(opened: grpc.Channel) -> ReadSideManagerServiceStub:
    return ReadSideManagerServiceStub(opened)  # type: ignore[no-untyped-call]


def states(node: Process, read_side_id: str) -> dict[int, str]:
    """shard → state name (`running`, `halted`, …) from the project's admin service."""
    with channel(node) as opened:
        reply = ReadSideAdminServiceStub(opened).ListReadSides(  # type: ignore[no-untyped-call]
            admin.ListReadSidesRequest(read_side_id=read_side_id), timeout=10
        )
    (status,) = reply.read_sides
    return {
        shard.cluster_shard_number: admin.ProjectionState.Name(shard.state)
        .removeprefix("PROJECTION_STATE_")
        .lower()
        for shard in status.shards
    }


def admin_status(node: Process, read_side_id: str) -> Any:
    with channel(node) as opened:
        reply = ReadSideAdminServiceStub(opened).ListReadSides(  # type: ignore[no-untyped-call]
            admin.ListReadSidesRequest(read_side_id=read_side_id), timeout=10
        )
    return reply.read_sides[0]


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cos_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chiefofstate", *args],
        capture_output=True,
        # no terminal to answer a confirmation on, whoever runs the tests
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
    )
