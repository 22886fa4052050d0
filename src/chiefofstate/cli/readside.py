"""`cos readside …`: inspect and steer a running node's read sides over gRPC.

`offsets`, `pause`, `resume`, `restart` and `skip` call upstream's `ReadSideManagerService`, so they work
the same against any node that serves it. `list` also needs what that service cannot say — each
projection's state, its shard's newest journal offset and its lag — and asks the project's
`ReadSideAdminService` for it (see protos/chiefofstate/internal/v1/readside_admin.proto). Options before
the command choose TLS and a bearer token (cli/connection.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import grpc
import typer
from rich.table import Table

from chiefofstate.cli.connection import (
    CaFile,
    CertFile,
    Connection,
    KeyFile,
    Tls,
    Token,
    current_connection,
    use_connection,
)
from chiefofstate.cli.output import AsJson, make_console, print_json
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc import ReadSideManagerServiceStub
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.gen.chiefofstate.internal.v1.readside_admin_pb2_grpc import ReadSideAdminServiceStub

STATE_TRAILER = "x-cos-read-side-state"

app = typer.Typer(no_args_is_help=True, help="Inspect and steer the read sides of a running node.")


@app.callback()
def connect(
    token: Token = None,
    tls: Tls = False,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
) -> None:
    """Options before the command say how to reach the node: `cos readside --ca-file ca.pem list`."""
    use_connection(Connection(token, tls, ca_file, cert_file, key_file))


console = make_console()
Reply = TypeVar("Reply")

ReadSideId = Annotated[str, typer.Argument(help="the read side's id (readSideId)")]
Host = Annotated[str, typer.Option(help="the node's gRPC address")]
Port = Annotated[int, typer.Option(help="the node's gRPC port", envvar="COS_PORT")]
Shard = Annotated[int | None, typer.Option(help="only this shard (default: every shard)", min=0)]
Timeout = Annotated[float, typer.Option(help="seconds to wait for the node's answer")]

_STATE_STYLES = {
    admin.PROJECTION_STATE_RUNNING: ("running", "green"),
    admin.PROJECTION_STATE_PAUSED: ("paused", "yellow"),
    admin.PROJECTION_STATE_HALTED: ("halted", "bold red"),
    admin.PROJECTION_STATE_STOPPED: ("stopped", "red"),
    admin.PROJECTION_STATE_RESTARTING: ("restarting", "yellow"),
    admin.PROJECTION_STATE_DISABLED: ("disabled", "dim"),
    admin.PROJECTION_STATE_UNASSIGNED: ("unassigned", "yellow"),
}


def _call(host: str, port: int, call: Callable[[grpc.Channel], Reply]) -> Reply:
    """One call to the node; a failure prints its status and exits 1."""
    with current_connection().channel(f"{host}:{port}") as channel:
        try:
            return call(channel)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code is grpc.StatusCode.UNIMPLEMENTED:
                details = f"{details} (is COS_READ_SIDE_ENABLED=true on the node at {host}:{port}?)"
            console.print(f"[red]error:[/red] {code.name}: {details}", highlight=False)
            raise typer.Exit(1) from None


def _state_summary(call: Any) -> str:
    for key, value in call.trailing_metadata() or ():
        if key == STATE_TRAILER:
            return str(value)
    return ""


def _shard_table(status: admin.ReadSideStatus) -> Table:
    title = (
        f"read side [bold]{status.read_side_id}[/bold] — {status.protocol} {status.target}, "
        f"failure policy {status.failure_policy}" + ("" if status.enabled else ", [dim]disabled[/dim]")
    )
    table = Table(title=title, title_justify="left")
    # A cluster member names the member that runs each projection; a lone node has no such column.
    clustered = any(shard.member for shard in status.shards)
    columns = [
        ("shard", "right"),
        ("offset", "right"),
        ("journal offset", "right"),
        ("lag", "right"),
        ("state", "left"),
        ("detail", "left"),
    ]
    if clustered:
        columns.insert(5, ("member", "left"))
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for shard in status.shards:
        name, style = _STATE_STYLES.get(shard.state, ("unknown", ""))
        detail = shard.detail
        if shard.HasField("halted_on_offset"):
            since = datetime.fromtimestamp(shard.halted_at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            detail = f"on offset {shard.halted_on_offset} since {since}: {detail}"
        cells = [
            str(shard.cluster_shard_number),
            str(shard.offset) if shard.HasField("offset") else "-",
            str(shard.journal_offset),
            f"{shard.lag}+" if shard.lag_capped else str(shard.lag),
            f"[{style}]{name}[/{style}]" if style else name,
            detail,
        ]
        if clustered:
            cells.insert(5, shard.member or "-")
        table.add_row(*cells)
    return table


def _shard_json(shard: admin.ShardStatus) -> dict[str, Any]:
    return {
        "shard": shard.cluster_shard_number,
        "offset": shard.offset if shard.HasField("offset") else None,
        "journal_offset": shard.journal_offset,
        "lag": shard.lag,
        "lag_capped": shard.lag_capped,
        "state": _STATE_STYLES.get(shard.state, ("unknown", ""))[0],
        "detail": shard.detail,
        "halted_on_offset": shard.halted_on_offset if shard.HasField("halted_on_offset") else None,
        "halted_at": (
            datetime.fromtimestamp(shard.halted_at / 1000, UTC).isoformat(timespec="milliseconds")
            if shard.HasField("halted_on_offset")
            else None
        ),
        "member": shard.member or None,
    }


def _status_json(status: admin.ReadSideStatus) -> dict[str, Any]:
    return {
        "read_side_id": status.read_side_id,
        "protocol": status.protocol,
        "target": status.target,
        "failure_policy": status.failure_policy,
        "enabled": status.enabled,
        "shards": [_shard_json(shard) for shard in status.shards],
    }


def _list(
    host: str, port: int, read_side_id: str | None, shard: int | None, timeout: float
) -> admin.ListReadSidesResponse:
    request = admin.ListReadSidesRequest(read_side_id=read_side_id or "")
    if shard is not None:
        request.cluster_shard_number = shard
    reply: admin.ListReadSidesResponse = _call(
        host, port, lambda channel: ReadSideAdminServiceStub(channel).ListReadSides(request, timeout=timeout)
    )
    return reply


def _show(
    host: str, port: int, read_side_id: str | None, shard: int | None, timeout: float, as_json: bool = False
) -> None:
    reply = _list(host, port, read_side_id, shard, timeout)
    if as_json:
        print_json({"read_sides": [_status_json(status) for status in reply.read_sides]})
        return
    if not reply.read_sides:
        console.print("no read side is configured on this node")
    for status in reply.read_sides:
        console.print(_shard_table(status))


@app.command("list")
def list_read_sides(
    read_side_id: Annotated[str | None, typer.Argument(help="only this read side")] = None,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 10.0,
    as_json: AsJson = False,
) -> None:
    """Every read side and shard: offset, newest journal offset of the shard, lag and state."""
    _show(host, port, read_side_id, shard, timeout, as_json)


@app.command()
def offsets(
    read_side_id: ReadSideId,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 10.0,
    as_json: AsJson = False,
) -> None:
    """The stored offsets (GetLatestOffset / GetLatestOffsetByShard); 0 means none stored yet."""

    def ask(channel: grpc.Channel) -> tuple[list[tuple[int, int]], str]:
        stub = ReadSideManagerServiceStub(channel)
        if shard is None:
            reply, call = stub.GetLatestOffset.with_call(
                pb.GetLatestOffsetRequest(read_side_id=read_side_id), timeout=timeout
            )
            return [(o.cluster_shard_number, o.offset) for o in reply.offsets], _state_summary(call)
        by_shard, call = stub.GetLatestOffsetByShard.with_call(
            pb.GetLatestOffsetByShardRequest(read_side_id=read_side_id, cluster_shard_number=shard),
            timeout=timeout,
        )
        return [(by_shard.offsets.cluster_shard_number, by_shard.offsets.offset)], _state_summary(call)

    rows, states = _call(host, port, ask)
    if as_json:
        offsets_json = [{"shard": number, "offset": offset} for number, offset in rows]
        print_json({"read_side_id": read_side_id, "offsets": offsets_json, "states": states or None})
        return
    title = f"offsets of read side {read_side_id}"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("shard", justify="right")
    table.add_column("offset", justify="right")
    for number, offset in rows:
        table.add_row(str(number), str(offset))
    console.print(table)
    if states:
        console.print(f"states: {states}", highlight=False)


def _act(
    verb: str,
    rpc: str,
    read_side_id: str,
    shard: int | None,
    host: str,
    port: int,
    timeout: float,
    as_json: bool,
    confirm: str | None = None,
) -> None:
    """Call `rpc` (all shards) or `rpc + "ByShard"` (one shard) of the manager, then show the result.

    The four actions' messages follow one naming pattern (`<Rpc>Request`, `<Rpc>ByShardRequest`,
    docs/contract.md §2.5), so the call is looked up by name rather than written out four times.
    `confirm`, for an action that cannot be undone, is the question asked first; without a terminal to
    ask on, the action is refused unless --yes was given.
    """
    where = "every shard" if shard is None else f"shard {shard}"
    if confirm is not None:
        _confirm(f"{confirm} of read side {read_side_id} on {where}?")

    def send(channel: grpc.Channel) -> Any:
        stub = ReadSideManagerServiceStub(channel)
        if shard is None:
            request = getattr(pb, f"{rpc}Request")(read_side_id=read_side_id)
            return getattr(stub, rpc)(request, timeout=timeout)
        request = getattr(pb, f"{rpc}ByShardRequest")(read_side_id=read_side_id, cluster_shard_number=shard)
        return getattr(stub, f"{rpc}ByShard")(request, timeout=timeout)

    _call(host, port, send)
    if as_json:
        reply = _list(host, port, read_side_id, shard, timeout)
        print_json(
            {
                "action": rpc,
                "read_side_id": read_side_id,
                "shard": shard,
                "read_sides": [_status_json(status) for status in reply.read_sides],
            }
        )
        return
    console.print(f"{verb} read side [bold]{read_side_id}[/bold] on {where}")
    _show(host, port, read_side_id, shard, timeout)


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        print(f"error: {question[:-1]} needs confirmation: add --yes", file=sys.stderr)
        raise typer.Exit(1)
    if not typer.confirm(question, default=False):
        print("nothing done", file=sys.stderr)
        raise typer.Exit(1)


Yes = Annotated[bool, typer.Option("--yes", "-y", help="do it without asking")]


@app.command()
def pause(
    read_side_id: ReadSideId,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Stop delivering; the paused flag is stored and survives restarts."""
    _act("paused", "PauseReadSide", read_side_id, shard, host, port, timeout, as_json)


@app.command()
def resume(
    read_side_id: ReadSideId,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Deliver again from the stored offset; also ends a halt (the failing event is retried)."""
    _act("resumed", "ResumeReadSide", read_side_id, shard, host, port, timeout, as_json)


@app.command()
def restart(
    read_side_id: ReadSideId,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
    yes: Yes = False,
) -> None:
    """Delete the stored offset and replay the shard(s) from the oldest event (asks first unless --yes)."""
    question = None if yes else "Delete the stored offset and replay every event"
    _act("restarted", "RestartReadSide", read_side_id, shard, host, port, timeout, as_json, question)


@app.command()
def skip(
    read_side_id: ReadSideId,
    shard: Shard = None,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
    yes: Yes = False,
) -> None:
    """Move past the next unprocessed event of the shard(s) — the one a halted projection is stuck on;
    that event is never delivered (asks first unless --yes)."""
    question = None if yes else "Skip the next unprocessed event (it is never delivered)"
    _act(
        "skipped the next event of", "SkipOffset", read_side_id, shard, host, port, timeout, as_json, question
    )
