"""`cos demo`: a node on a fresh SQLite file, the example bank handlers (written with the Python
developer kit, `chiefofstate.sdk`), and a scripted session.

Everything runs as real processes talking real gRPC, exactly as in production, only smaller.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from chiefofstate_examples.bank import client as bank
from google.protobuf.any_pb2 import Any as AnyProto
from rich.console import Console
from rich.panel import Panel

from chiefofstate.cli.inspect import read_events
from chiefofstate.cli.processes import (
    Process,
    node_environment,
    start_bank_read_handler,
    start_bank_write_handler,
    start_node,
)
from chiefofstate.config.settings import load_settings
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.inspect.decoding import compact, type_name
from chiefofstate.inspect.descriptors import from_this_process


@dataclass
class Script:
    console: Console
    stub: ChiefOfStateServiceStub
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"   {mark} {what}")
        if not ok:
            self.failures.append(what)

    def command(
        self, account: str, label: str, command: AnyProto
    ) -> pb.ProcessCommandResponse | grpc.RpcError:
        self.console.print(f"\n[bold]→ {label}[/bold] [dim](entity {account})[/dim]")
        try:
            reply: pb.ProcessCommandResponse = self.stub.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=account, command=command),
                timeout=10,
                metadata=(("x-demo-user", "demo-script"),),
            )
        except grpc.RpcError as error:
            self.console.print(f"   rejected: [yellow]{error.code().name}[/yellow] {error.details()}")
            return error
        self._show(reply.state, reply.meta.revision_number)
        return reply

    def state(self, account: str) -> pb.GetStateResponse | grpc.RpcError:
        self.console.print(f"\n[bold]→ GetState[/bold] [dim](entity {account})[/dim]")
        try:
            reply: pb.GetStateResponse = self.stub.GetState(pb.GetStateRequest(entity_id=account), timeout=10)
        except grpc.RpcError as error:
            self.console.print(f"   answered: [yellow]{error.code().name}[/yellow] {error.details() or ''}")
            return error
        self._show(reply.state, reply.meta.revision_number)
        return reply

    def _show(self, state: AnyProto, revision: int) -> None:
        account = bank.account_from_any(state)
        balance = f"{account.balance / 100:.2f}"
        self.console.print(f"   {account.owner}'s balance [bold]{balance}[/bold], revision {revision}")


def _balance(reply: object) -> int | None:
    if isinstance(reply, pb.ProcessCommandResponse | pb.GetStateResponse):
        return bank.account_from_any(reply.state).balance
    return None


def _revision(reply: object) -> int | None:
    if isinstance(reply, pb.ProcessCommandResponse | pb.GetStateResponse):
        return reply.meta.revision_number
    return None


def _code(reply: object) -> grpc.StatusCode | None:
    return reply.code() if isinstance(reply, grpc.RpcError) else None


def _session(script: Script) -> None:
    ok = script.check
    reply: object = script.command(
        "alice", "OpenAccount(owner=Alice, initial=100.00)", bank.open_account("Alice", 100_00)
    )
    ok(_revision(reply) == 1 and _balance(reply) == 100_00, "account opened at revision 1")
    reply = script.command("alice", "Deposit(50.00)", bank.deposit(50_00))
    ok(_balance(reply) == 150_00 and _revision(reply) == 2, "balance 150.00 at revision 2")
    reply = script.command("bob", "OpenAccount(owner=Bob, initial=20.00)", bank.open_account("Bob", 20_00))
    ok(_revision(reply) == 1, "a second entity, processed independently")
    reply = script.command("alice", "Withdraw(500.00)", bank.withdraw(500_00))
    ok(_code(reply) == grpc.StatusCode.FAILED_PRECONDITION, "overdraft rejected with FAILED_PRECONDITION")
    reply = script.state("alice")
    ok(_revision(reply) == 2 and _balance(reply) == 150_00, "the rejected command wrote nothing")
    reply = script.command("alice", "TransferOut(30.00, fee 1.00)", bank.transfer_out(30_00, 1_00, "bob"))
    ok(_revision(reply) == 4 and _balance(reply) == 119_00, "one command, two events: revisions 3 and 4")
    reply = script.command("alice", "GetBalance (a read-only command)", bank.get_balance())
    ok(_revision(reply) == 4, "a no-op command consumes no revision")
    reply = script.state("carol")
    ok(_code(reply) == grpc.StatusCode.NOT_FOUND, "an entity that never existed is NOT_FOUND")


def _show_journal(console: Console, env: dict[str, str], entity_id: str) -> None:
    settings = load_settings(env, require_write_side=False)
    # The bank's generated code is imported here, so its types decode without asking the handler.
    events = asyncio.run(read_events(settings, entity_id, 100, from_this_process()))
    console.print(f"\n[bold]journal rows of {entity_id}[/bold] (what `cos events {entity_id}` prints)")
    for event in events:
        headers = ", ".join(
            f"{h['key']}={h.get('string_value', h.get('bytes_value'))}" for h in event["headers"]
        )
        console.print(
            f"   revision {event['revision']:<3} {event['revision_date']}"
            f"  {type_name(event['event']['type']):<22} {compact(event['event']['json'])}"
            f"  ordering {event['ordering']:<3} shard {event['shard']}  headers: {headers or '-'}",
            highlight=False,
            soft_wrap=True,
        )


def _show_read_side(console: Console, deliveries: Path, script: Script) -> None:
    """The read side catches up: every event reached the bank read handler, in order per account."""
    console.print("\n[bold]read side 'balances'[/bold] (the bank read handler's projection)")
    expected = {"alice": 5, "bob": 1}
    seen: dict[str, list[int]] = {}
    balances: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen.clear()
        lines = deliveries.read_text().splitlines() if deliveries.exists() else []
        for delivery in map(json.loads, lines):
            seen.setdefault(delivery["entity_id"], []).append(delivery["revision"])
            balances[delivery["entity_id"]] = delivery["balance"]
        if all(seen.get(account, [])[-1:] == [revision] for account, revision in expected.items()):
            break
        time.sleep(0.05)
    for account, revisions in sorted(seen.items()):
        console.print(f"   {account}: balance {balances[account] / 100:.2f}, revisions delivered {revisions}")
    script.check(
        all(seen.get(account) == list(range(1, revision + 1)) for account, revision in expected.items()),
        "every event reached the read handler, in order, across the restart",
    )


def run_demo(console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="cos-demo-") as folder:
        return _run_in(Path(folder), console)


def _run_in(folder: Path, console: Console) -> int:
    database = folder / "cos.db"
    console.print(Panel.fit(f"Chief of State demo\nembedded SQLite journal: {database}", style="bold"))
    handler = start_bank_write_handler(folder / "logs")
    console.print(f"bank write handler (chiefofstate.sdk, gRPC) started on port {handler.ports['grpc']}")
    deliveries = folder / "deliveries.jsonl"
    reader = start_bank_read_handler(folder / "logs", deliveries=deliveries)
    console.print(
        f"bank read handler (chiefofstate.sdk, gRPC) started on port {reader.ports['grpc']}: "
        "read side 'balances'"
    )
    env = node_environment(
        os.environ,
        COS_DB_PATH=str(database),
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(handler.ports["grpc"]),
        COS_WRITE_PERSISTED_HEADERS="x-demo-user",
        LOG_STYLE="SIMPLE",
        LOG_LEVEL="WARN",
        COS_READ_SIDE_ENABLED="true",
        COS_READ_SIDE_CONFIG__HOST__balances="127.0.0.1",
        COS_READ_SIDE_CONFIG__PORT__balances=str(reader.ports["grpc"]),
    )
    env.pop("COS_DB_HOST", None)
    processes: list[Process] = [handler, reader]
    try:
        node = start_node(env, folder / "logs")
        processes.append(node)
        console.print(f"cos node started: gRPC on port {node.ports['grpc']}, ready on /ready")
        with grpc.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            script = Script(console, ChiefOfStateServiceStub(channel))
            _session(script)
        _restart_and_verify(console, env, folder, node, processes, script)
        _show_journal(console, env, "alice")
        _show_read_side(console, deliveries, script)
        failures = script.failures
    finally:
        for process in reversed(processes):
            process.stop()
    if failures:
        console.print(f"\n[red bold]demo failed:[/red bold] {len(failures)} check(s) did not hold")
        return 1
    console.print("\n[green bold]demo finished: every check held[/green bold]")
    return 0


def _restart_and_verify(
    console: Console,
    env: dict[str, str],
    folder: Path,
    node: Process,
    processes: list[Process],
    script: Script,
) -> None:
    console.print("\n[bold]→ restarting the node[/bold] (SIGTERM, then a fresh process on the same file)")
    exit_code = node.stop()
    script.check(exit_code == 0, f"node shut down cleanly (exit code {exit_code})")
    restarted = start_node(env, folder / "logs", name="cos-node-restarted")
    processes.append(restarted)
    with grpc.insecure_channel(f"127.0.0.1:{restarted.ports['grpc']}") as channel:
        script.stub = ChiefOfStateServiceStub(channel)
        reply: object = script.state("alice")
        script.check(_revision(reply) == 4 and _balance(reply) == 119_00, "state survived the restart")
        reply = script.command("alice", "Deposit(1.00) after the restart", bank.deposit(1_00))
        script.check(_revision(reply) == 5, "revisions continue where they left off")
