"""The bank's write handler over HTTP: upstream's HTTP write-side protocol (docs/contract.md §9).

Run it with `python -m chiefofstate_examples.bank.http_write_handler [--host 127.0.0.1] [--port 50052]`
and point CoS at it with `COS_WRITE_SIDE_PROTOCOL=http`. Once it accepts calls it prints one line,
`bank write handler listening on HOST:PORT`, to stdout; SIGTERM or SIGINT stops it (exit 0); `--port 0`
picks a free port.

It serves `POST /v1/writeside/handleCommand` and `POST /v1/writeside/handleEvent` with the JSON of §8.4
(every protobuf `Any` is the base64 of the serialized `Any`), using the same rules as the gRPC variant
(`domain.decide` / `domain.evolve`). A refused command is answered with an HTTP error status and
`{"error": "<message>", "code": "<gRPC code name>"}`; CoS turns every non-200 answer into `INTERNAL`
with the status and the start of the body in its message — an HTTP handler cannot choose the status
the CoS caller sees, which is the protocol's known limitation.

TEST HOOKS — the same variables as the gRPC variant (see write_handler.py), never for real deployments:

* `BANK_HANDLER_DELAY_MS=N` — every handleCommand waits N ms before answering.
* `BANK_HANDLER_FAULTS=1` — the gRPC variant's magic deposit amounts (666_666: wrong state type,
  777_777: no state), plus two that only an HTTP handler can produce, applied to a `Deposit` command
  in handleCommand:
  * `555_555` cents → `200` with a body that is not JSON;
  * `503_503` cents → `503 Service Unavailable` with a 300-character body;
  * `500_500` cents → handleCommand answers normally, then handleEvent answers
    `500 Internal Server Error` when it folds that deposit.
* `BANK_HANDLER_LOG_CALLS=1` — one JSON line per call on stdout, as the gRPC variant prints
  (`-bin` header values are shown as the hex of their base64-decoded bytes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Generator, Mapping, Sequence
from typing import Final

import grpc
import uvicorn
from fastapi import FastAPI, Request
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from starlette.responses import JSONResponse, Response

from chiefofstate.core.json_codec import JsonShapeError, message_from_json, message_to_json
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate_examples.bank.domain import BankError, decide, evolve
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.write_handler import FaultInjection, handler_main, injected_event_fault

DEFAULT_PORT: Final = 50052

# TEST HOOK amounts (cents), honoured only with BANK_HANDLER_FAULTS=1
MALFORMED_JSON_AMOUNT: Final = 555_555
SERVICE_UNAVAILABLE_AMOUNT: Final = 503_503
EVENT_FAILURE_AMOUNT: Final = 500_500

_HTTP_STATUS_OF_BANK_ERROR: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
}


def create_app(faults: FaultInjection | None = None) -> FastAPI:
    """The handler as an ASGI app; `faults=None` injects none."""
    hooks = FaultInjection() if faults is None else faults
    app = FastAPI(title="Bank write handler (HTTP)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/writeside/handleCommand")
    async def handle_command(request: Request) -> Response:
        try:
            call = message_from_json(HandleCommandRequest, await _json(request))
        except (JsonShapeError, ValueError) as error:
            return _refusal(400, "INVALID_ARGUMENT", str(error))
        if hooks.log_calls:
            _log_call("HandleCommand", request.headers, call.prior_state, call.prior_event_meta)
        if hooks.command_delay_ms:
            # TEST HOOK: lets CoS tests hit COS_GRPC_CALLS_TIMEOUT / the caller's deadline
            await asyncio.sleep(hooks.command_delay_ms / 1000)
        injected = _injected_command_fault(hooks, call.command)
        if injected is not None:
            return injected
        try:
            events = decide(call.command, call.prior_state, call.prior_event_meta)
        except BankError as error:
            return _bank_refusal(error)
        return JSONResponse(message_to_json(HandleCommandResponse(events=events)))

    @app.post("/v1/writeside/handleEvent")
    async def handle_event(request: Request) -> Response:
        try:
            call = message_from_json(HandleEventRequest, await _json(request))
        except (JsonShapeError, ValueError) as error:
            return _refusal(400, "INVALID_ARGUMENT", str(error))
        if hooks.log_calls:
            _log_call("HandleEvent", request.headers, call.prior_state, call.event_meta)
        if hooks.magic_deposit_amounts and _deposited(call.event) == EVENT_FAILURE_AMOUNT:
            return _refusal(500, "INTERNAL", "test hook: the event handler failed")
        reply = injected_event_fault(hooks, call.event)
        if reply is None:
            try:
                reply = HandleEventResponse(
                    resulting_state=evolve(call.event, call.prior_state, call.event_meta)
                )
            except BankError as error:
                return _bank_refusal(error)
        return JSONResponse(message_to_json(reply))

    return app


async def _json(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the body is not valid JSON: {error}") from None


def _refusal(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _bank_refusal(error: BankError) -> Response:
    return _refusal(_HTTP_STATUS_OF_BANK_ERROR.get(error.code, 500), error.code.name, error.message)


def _injected_command_fault(faults: FaultInjection, command: any_pb2.Any) -> Response | None:
    # TEST HOOK: answers only an HTTP handler can give; see the module docstring
    if not faults.magic_deposit_amounts:
        return None
    deposit = bank_pb2.Deposit()
    try:
        if not command.Unpack(deposit):
            return None
    except DecodeError:
        return None
    if deposit.amount == MALFORMED_JSON_AMOUNT:
        return Response('{"events": [', media_type="application/json")
    if deposit.amount == SERVICE_UNAVAILABLE_AMOUNT:
        return Response("test hook: the bank is closed for maintenance. " * 7, status_code=503)
    return None


def _deposited(event: any_pb2.Any) -> int | None:
    deposited = bank_pb2.MoneyDeposited()
    try:
        return deposited.amount if event.Unpack(deposited) else None
    except DecodeError:
        return None


def _log_call(name: str, headers: Mapping[str, str], prior: any_pb2.Any, meta: MetaData) -> None:
    """TEST HOOK: the same line as the gRPC variant prints, so CoS tests read both alike."""
    metadata: dict[str, str] = {}
    for key, value in headers.items():
        if not key.startswith("x-"):
            continue
        if key.endswith("-bin"):
            try:
                metadata[key] = base64.b64decode(value, validate=True).hex()
            except (binascii.Error, ValueError):
                metadata[key] = f"<not base64: {value}>"
        else:
            metadata[key] = value
    line = {
        "call": name,
        "metadata": metadata,
        "prior_type": prior.type_url,
        "revision": meta.revision_number,
    }
    print(json.dumps(line), flush=True)


class _SignalFreeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # _run_until_signalled handles SIGTERM and SIGINT


def _listen(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on such sockets, and without it every
    # keep-alive answer waits ~40 ms for the client's delayed ACK (socket.create_server leaves it 0).
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return listener


async def _run_until_signalled(host: str, port: int, faults: FaultInjection) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    listener = _listen(host, port)
    bound_port = int(listener.getsockname()[1])
    config = uvicorn.Config(
        create_app(faults), log_config=None, access_log=False, lifespan="off", ws="none", server_header=False
    )
    server = _SignalFreeServer(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="bank-http-handler")
    stopping = asyncio.create_task(stop_requested.wait(), name="bank-http-handler-stop")
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise OSError(f"cannot serve on {host}:{bound_port}")
            await asyncio.sleep(0.01)
        # tests and the demo wait for this exact line before they call the handler
        address = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        print(f"bank write handler listening on {address}", flush=True)
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True  # uvicorn closes idle keep-alive connections and finishes requests
        await asyncio.wait([serving], timeout=5)
        for task in (serving, stopping):
            task.cancel()
        # gather collects the tasks' own CancelledErrors; a cancellation of this coroutine propagates
        await asyncio.gather(serving, stopping, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.http_write_handler`; returns the exit code."""
    return handler_main(
        argv,
        prog="python -m chiefofstate_examples.bank.http_write_handler",
        description="Bank example write handler for Chief of State (HTTP write-side protocol).",
        default_port=DEFAULT_PORT,
        run=_run_until_signalled,
    )


if __name__ == "__main__":
    sys.exit(main())
