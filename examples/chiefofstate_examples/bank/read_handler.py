"""The bank's read handler: keeps a projection of every account's balance from the events CoS delivers.

Run it with
`python -m chiefofstate_examples.bank.read_handler [--host 127.0.0.1] [--port 50052] [--http] [--log PATH]`.
By default it serves `chief_of_state.v1.ReadSideHandlerService` over gRPC (plus the gRPC health service);
with `--http` it serves upstream's HTTP read-side protocol, `POST /v1/readside/handle`
(docs/contract.md §5.3).
Once it accepts calls it prints `bank read handler listening on HOST:PORT`; SIGTERM or SIGINT stops it.

Point a read side at it, e.g. with environment variables:

    COS_READ_SIDE_ENABLED=true
    COS_READ_SIDE_CONFIG__HOST__balances=127.0.0.1
    COS_READ_SIDE_CONFIG__PORT__balances=50052

The projection is kept in memory (`Balances`); `--log PATH` also appends one JSON line per delivery
to PATH — read side, entity, revision, event tag, outcome, the time received and the event's
revision date — so tests can check every delivery and its order.

TEST HOOKS — fault injection for CoS's own tests, all off unless set; never use them in a deployment.
Each takes a comma-separated list of `[read_side_id/]entity_id[@revision]` (`*` matches any entity):

* `BANK_READ_FAIL` — answer with an error (gRPC `INTERNAL`, HTTP 500);
* `BANK_READ_REFUSE` — answer `successful=false`;
* `BANK_READ_HANG` — never answer (CoS's timeout must end the call);
* `BANK_READ_HOLD` — never answer the first delivery of the event (logged as `held`), answer the later
  ones normally: a pause point inside the read handler, to kill CoS while a delivery is in flight;
* `BANK_READ_DELAY_MS=N` — every call waits N milliseconds before answering (a slow read handler).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chiefofstate.core.json_codec import JsonShapeError, message_from_json
from chiefofstate.gen.chief_of_state.v1 import readside_pb2, readside_pb2_grpc
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest, HandleReadSideResponse
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50052
SERVICE_NAME: Final = readside_pb2.DESCRIPTOR.services_by_name["ReadSideHandlerService"].full_name
HANDLE_PATH: Final = "/v1/readside/handle"
HANG_LIMIT_S: Final = 3600.0


@dataclass(frozen=True)
class Account:
    owner: str
    balance: int  # cents
    revision: int


@dataclass
class Balances:
    """The projection: each account's latest state. Redelivered or older events change nothing, so
    at-least-once delivery is harmless."""

    accounts: dict[str, Account] = field(default_factory=dict)

    def apply(self, request: HandleReadSideRequest) -> Account | None:
        state = bank_pb2.BankAccount()
        if not request.state.Unpack(state):
            return None
        entity_id = request.meta.entity_id
        revision = request.meta.revision_number
        known = self.accounts.get(entity_id)
        if known is None or revision > known.revision:
            self.accounts[entity_id] = Account(state.owner, state.balance, revision)
        return self.accounts[entity_id]


@dataclass(frozen=True)
class Selector:
    read_side_id: str | None
    entity_id: str
    revision: int | None

    @classmethod
    def parse(cls, text: str) -> Selector:
        read_side_id, _, rest = text.rpartition("/")
        entity_id, _, revision = rest.partition("@")
        return cls(read_side_id or None, entity_id, int(revision) if revision else None)

    def matches(self, read_side_id: str, entity_id: str, revision: int) -> bool:
        return (
            (self.read_side_id is None or self.read_side_id == read_side_id)
            and self.entity_id in ("*", entity_id)
            and (self.revision is None or self.revision == revision)
        )


def _selectors(text: str) -> tuple[Selector, ...]:
    return tuple(Selector.parse(part.strip()) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class ReadFaults:
    """TEST HOOKS (see the module docstring). The default injects none."""

    fail: tuple[Selector, ...] = ()
    refuse: tuple[Selector, ...] = ()
    hang: tuple[Selector, ...] = ()
    hold: tuple[Selector, ...] = ()
    delay_ms: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ReadFaults:
        env = os.environ if environ is None else environ
        raw_delay = env.get("BANK_READ_DELAY_MS", "").strip() or "0"
        if not raw_delay.isdigit():
            raise ValueError(f"BANK_READ_DELAY_MS must be a whole number of milliseconds (got {raw_delay!r})")
        return cls(
            fail=_selectors(env.get("BANK_READ_FAIL", "")),
            refuse=_selectors(env.get("BANK_READ_REFUSE", "")),
            hang=_selectors(env.get("BANK_READ_HANG", "")),
            hold=_selectors(env.get("BANK_READ_HOLD", "")),
            delay_ms=int(raw_delay),
        )

    def holds(self, read_side_id: str, entity_id: str, revision: int) -> bool:
        return any(selector.matches(read_side_id, entity_id, revision) for selector in self.hold)

    def outcome(self, read_side_id: str, entity_id: str, revision: int) -> str:
        """`ok`, `failed`, `refused` or `hang` for one delivery."""
        for name, selectors in (("hang", self.hang), ("failed", self.fail), ("refused", self.refuse)):
            if any(selector.matches(read_side_id, entity_id, revision) for selector in selectors):
                return name
        return "ok"


class ReadModel:
    """What both transports share: the projection, the hooks and the delivery log."""

    def __init__(self, faults: ReadFaults, log: TextIO | None) -> None:
        self.balances = Balances()
        self.faults = faults
        self._log = log
        self._held: set[tuple[str, str, int]] = set()  # events whose first delivery was held

    async def handle(
        self, request: HandleReadSideRequest, entity_header: str, tag_header: str, traceparent: str = ""
    ) -> str:
        """The outcome of one delivery; `ok` means the projection took the event."""
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)  # TEST HOOK: a slow read handler
        meta = request.meta
        outcome = self.faults.outcome(request.read_side_id, meta.entity_id, meta.revision_number)
        event = (request.read_side_id, meta.entity_id, meta.revision_number)
        if outcome == "ok" and event not in self._held and self.faults.holds(*event):
            self._held.add(event)
            outcome = "held"
        account = self.balances.apply(request) if outcome == "ok" else None
        self._record(request, entity_header, tag_header, outcome, account, traceparent)
        if outcome in ("hang", "held"):
            await asyncio.sleep(HANG_LIMIT_S)  # TEST HOOK: CoS's timeout (or its death) must come first
        return outcome

    def _record(
        self,
        request: HandleReadSideRequest,
        entity_header: str,
        tag_header: str,
        outcome: str,
        account: Account | None,
        traceparent: str,
    ) -> None:
        if self._log is None:
            return
        meta = request.meta
        line = {
            "read_side_id": request.read_side_id,
            "entity_id": meta.entity_id,
            "revision": meta.revision_number,
            "x_cos_entity_id": entity_header,
            "x_cos_event_tag": tag_header,
            "event_type": request.event.type_url,
            "balance": account.balance if account else None,
            "outcome": outcome,
            "received_at": time.time(),
            "revision_date": meta.revision_date.seconds + meta.revision_date.nanos / 1e9,
            "traceparent": traceparent,  # the W3C trace context CoS sent, when its tracing is on
        }
        # One short line per delivery; the file is opened line-buffered, so this is one write() call.
        self._log.write(json.dumps(line) + "\n")


class GrpcReadSide(readside_pb2_grpc.ReadSideHandlerServiceServicer):
    def __init__(self, model: ReadModel) -> None:
        self._model = model

    async def HandleReadSide(
        self,
        request: HandleReadSideRequest,
        context: grpc.aio.ServicerContext[HandleReadSideRequest, HandleReadSideResponse],
    ) -> HandleReadSideResponse:
        metadata = {
            key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
        }
        outcome = await self._model.handle(
            request,
            metadata.get("x-cos-entity-id", ""),
            metadata.get("x-cos-event-tag", ""),
            metadata.get("traceparent", ""),
        )
        if outcome == "failed":
            await context.abort(grpc.StatusCode.INTERNAL, "test hook: BANK_READ_FAIL")
        return HandleReadSideResponse(successful=outcome == "ok")


def http_app(model: ReadModel) -> Starlette:
    async def handle(request: Request) -> Response:
        try:
            body = message_from_json(HandleReadSideRequest, json.loads(await request.body()))
        except (ValueError, JsonShapeError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        outcome = await model.handle(
            body,
            request.headers.get("x-cos-entity-id", ""),
            request.headers.get("x-cos-event-tag", ""),
            request.headers.get("traceparent", ""),
        )
        if outcome == "failed":
            return JSONResponse({"error": "test hook: BANK_READ_FAIL"}, status_code=500)
        return JSONResponse({"successful": outcome == "ok"})

    return Starlette(routes=[Route(HANDLE_PATH, handle, methods=["POST"])])


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve_grpc(model: ReadModel, host: str, port: int, stop: asyncio.Event) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    readside_pb2_grpc.add_ReadSideHandlerServiceServicer_to_server(GrpcReadSide(model), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(_target(host, port))
    except RuntimeError as error:
        raise OSError(f"cannot listen on {_target(host, port)}: {error}") from error
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    try:
        print(f"bank read handler listening on {_target(host, bound)}", flush=True)
        await stop.wait()
    finally:
        await server.stop(1.0)


async def _serve_http(model: ReadModel, host: str, port: int, stop: asyncio.Event) -> None:
    from chiefofstate.api.http_server import HttpServer

    server = HttpServer(http_app(model), host, port, shutdown_timeout_s=1.0)
    await server.start()
    try:
        print(f"bank read handler listening on {_target(host, server.port)}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


async def _run(args: Any, faults: ReadFaults, log: TextIO | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    serve = _serve_http if args.http else _serve_grpc
    await serve(ReadModel(faults, log), args.host, args.port, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.read_handler`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m chiefofstate_examples.bank.read_handler",
        description="Bank example read handler for Chief of State (a projection of balances).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port, 0 = any free one (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--http", action="store_true", help="serve the HTTP read-side protocol instead of gRPC"
    )
    parser.add_argument("--log", default="", help="append one JSON line per delivery to this file")
    args = parser.parse_args(argv)
    try:
        faults = ReadFaults.from_environment()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as files:
            log = (
                files.enter_context(Path(args.log).open("a", buffering=1, encoding="utf-8"))
                if args.log
                else None
            )
            asyncio.run(_run(args, faults, log))
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
