"""The node the fuzzer talks to: a real `cos serve` (SQLite, gRPC and HTTP, subscriptions on) with the
example bank write handler, both as processes of their own."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chiefofstate.cli.processes import Process, start_bank_write_handler, start_node_on_free_ports

# Headers the node carries on: fuzzed values of these reach the write handler and the journal.
CARRIED_HEADERS = "x-user,x-sig-bin"


@dataclass
class FuzzTarget:
    node: Process
    handler: Process
    db_path: Path

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.node.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.node.ports['http']}"

    def stored_revisions(self) -> dict[str, int]:
        """entity id → its highest stored revision, read from the journal file."""
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            rows = connection.execute(
                "SELECT persistence_id, max(sequence_number) FROM event_journal GROUP BY persistence_id"
            ).fetchall()
        finally:
            connection.close()
        return {str(entity_id): int(revision) for entity_id, revision in rows}

    def problems_in_log(self) -> list[str]:
        """Lines of the node's log that show a crash or an unexpected failure."""
        return [
            line[:300]
            for line in self.node.log_text().splitlines()
            if "Traceback" in line or '"level": "ERROR"' in line or "stack_trace" in line
        ]


def node_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COS_", "LOG_"))}
    env.update(
        COS_WRITE_SIDE_PROTOCOL="grpc",
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_SERVER_PROTOCOL="both",
        COS_SUBSCRIPTION_ENABLED="true",
        COS_WRITE_PERSISTED_HEADERS=CARRIED_HEADERS,
        COS_WRITE_SIDE_PROPAGATED_HEADERS=CARRIED_HEADERS,
        LOG_LEVEL="WARN",
        LOG_STYLE="JSON",
    )
    return env


@contextlib.contextmanager
def running_target(folder: Path | None = None) -> Iterator[FuzzTarget]:
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cos-fuzz-")))
        handler = start_bank_write_handler(folder / "handler")
        stack.callback(handler.stop)
        env = {
            **node_environment(),
            "COS_WRITE_SIDE_PORT": str(handler.ports["write_side"]),
            "COS_DB_PATH": str(folder / "cos.db"),
        }
        node = start_node_on_free_ports(env, folder / "node", name="cos-fuzz-node")
        stack.callback(node.stop)
        yield FuzzTarget(node, handler, folder / "cos.db")
