"""TEST HOOKS of the bank's write handler: fault injection for Chief of State's own tests, and the
tracing of each call. All faults are off unless the environment turns them on; never set these in a real
deployment:

* `BANK_HANDLER_DELAY_MS=N` — every `HandleCommand` sleeps N milliseconds before answering (deadline and
  timeout tests).
* `BANK_HANDLER_FAULTS=1` — enables the magic deposit amounts (cents):
  * `666_666` → `HandleEvent`'s `resulting_state` is a `google.protobuf.StringValue` instead of a
    `bank.v1.BankAccount` (proto validation must refuse it: `invalid state: ...`);
  * `777_777` → `HandleEvent` replies with no `resulting_state` at all (`event handler replied with
    empty state`);
  and, over HTTP only (answers a gRPC server cannot give), applied by `HttpOnlyFaults`:
  * `555_555` → handleCommand answers `200` with a body that is not JSON;
  * `503_503` → handleCommand answers `503 Service Unavailable` with a 300-character text body;
  * `500_500` → handleCommand answers normally, then handleEvent answers `500` when it folds that deposit.
  The account must exist first: a deposit to a missing account is refused before any event is made.
* `BANK_HANDLER_LOG_CALLS=1` — one JSON line per call on stdout (`{"call": "HandleCommand", "metadata":
  {...}, "prior_type": ..., "revision": ...}`; `-bin` header values as the hex of their bytes), so tests
  can see which headers and which prior state each call received.

These are written on the developer kit's extension points: `HookedBank` overrides the
`handle_command_call` / `handle_event_call` every transport invokes, and `HttpOnlyFaults` is Starlette
middleware given to `serve(..., http_middleware=...)`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import DecodeError
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chiefofstate.core.json_codec import JsonShapeError, message_from_json
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.sdk import call_headers
from chiefofstate.telemetry.tracing import TRACING_OFF, Tracing
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank

WRONG_STATE_TYPE_AMOUNT: Final = 666_666
NO_STATE_AMOUNT: Final = 777_777
MALFORMED_JSON_AMOUNT: Final = 555_555
SERVICE_UNAVAILABLE_AMOUNT: Final = 503_503
EVENT_FAILURE_AMOUNT: Final = 500_500

_DELAY_VARIABLE: Final = "BANK_HANDLER_DELAY_MS"
_FAULTS_VARIABLE: Final = "BANK_HANDLER_FAULTS"
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class FaultInjection:
    """Which faults the handler injects (see the module docstring). The default injects none."""

    command_delay_ms: int = 0
    magic_deposit_amounts: bool = False
    log_calls: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> FaultInjection:
        """Read the BANK_HANDLER_* variables; ValueError names a bad one."""
        env = os.environ if environ is None else environ
        raw_delay = env.get(_DELAY_VARIABLE, "").strip() or "0"
        try:
            delay = int(raw_delay)
        except ValueError:
            delay = -1
        if delay < 0:
            raise ValueError(
                f"{_DELAY_VARIABLE} must be a whole number of milliseconds >= 0 (got {raw_delay!r})"
            )
        raw_faults = env.get(_FAULTS_VARIABLE, "").strip().lower()
        if raw_faults not in _TRUE_WORDS | _FALSE_WORDS:
            raise ValueError(f"{_FAULTS_VARIABLE} must be 1 or 0 (got {raw_faults!r})")
        log_calls = env.get("BANK_HANDLER_LOG_CALLS", "").strip().lower() in _TRUE_WORDS
        return cls(
            command_delay_ms=delay, magic_deposit_amounts=raw_faults in _TRUE_WORDS, log_calls=log_calls
        )


class HookedBank(Bank):
    """The bank with its test hooks and tracing: each call joins the node's trace (the node sends its
    span context in the call's headers, OTEL_PROPAGATORS) as a `bank.HandleCommand` / `bank.HandleEvent`
    span."""

    def __init__(self, faults: FaultInjection | None = None, tracing: Tracing = TRACING_OFF) -> None:
        self._faults = FaultInjection() if faults is None else faults
        self._tracing = tracing

    async def handle_command_call(self, request: HandleCommandRequest) -> HandleCommandResponse:
        if self._faults.log_calls:
            _log_call("HandleCommand", request.prior_state, request.prior_event_meta)
        if self._faults.command_delay_ms:
            await asyncio.sleep(self._faults.command_delay_ms / 1000)
        with self._span("bank.HandleCommand"):
            return await super().handle_command_call(request)

    async def handle_event_call(self, request: HandleEventRequest) -> HandleEventResponse:
        if self._faults.log_calls:
            _log_call("HandleEvent", request.prior_state, request.event_meta)
        if self._faults.magic_deposit_amounts:
            injected = _injected_event_fault(_deposited(request.event))
            if injected is not None:
                return injected
        with self._span("bank.HandleEvent"):
            return await super().handle_event_call(request)

    def _span(self, name: str) -> AbstractContextManager[object]:
        parent = self._tracing.extract(list(call_headers().items()))
        return self._tracing.span(name, kind=SpanKind.SERVER, parent=parent)


def _injected_event_fault(amount: int | None) -> HandleEventResponse | None:
    if amount == WRONG_STATE_TYPE_AMOUNT:
        wrong_state = any_pb2.Any()
        wrong_state.Pack(wrappers_pb2.StringValue(value="test hook: not a bank.v1.BankAccount"))
        return HandleEventResponse(resulting_state=wrong_state)
    if amount == NO_STATE_AMOUNT:
        return HandleEventResponse()
    return None


def _deposited(
    value: any_pb2.Any, kind: type[bank_pb2.MoneyDeposited | bank_pb2.Deposit] = bank_pb2.MoneyDeposited
) -> int | None:
    """The amount of a packed MoneyDeposited (or Deposit); None for anything else."""
    message = kind()
    try:
        return message.amount if value.Unpack(message) else None
    except DecodeError:
        return None  # the handler's own methods report a malformed message properly


def _log_call(name: str, prior: any_pb2.Any, meta: MetaData) -> None:
    metadata = {
        key: value.hex() if isinstance(value, bytes) else value
        for key, value in call_headers().items()
        if key.startswith("x-")
    }
    line = {
        "call": name,
        "metadata": metadata,
        "prior_type": prior.type_url,
        "revision": meta.revision_number,
    }
    print(json.dumps(line), flush=True)


class HttpOnlyFaults:
    """ASGI middleware: the answers only an HTTP handler can give wrong (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in ("/v1/writeside/handleCommand", "/v1/writeside/handleEvent"):
            await self._app(scope, receive, send)
            return
        body = await _read_body(receive)
        answer = _http_fault(path, body)
        if answer is not None:
            status, content_type, text = answer
            headers = [(b"content-type", content_type), (b"content-length", str(len(text)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": text})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body, only a disconnect can come
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _http_fault(path: str, body: bytes) -> tuple[int, bytes, bytes] | None:
    try:
        if path.endswith("handleCommand"):
            command = message_from_json(HandleCommandRequest, json.loads(body)).command
            amount = _deposited(command, bank_pb2.Deposit)
            if amount == MALFORMED_JSON_AMOUNT:
                return 200, b"application/json", b'{"events": ['
            if amount == SERVICE_UNAVAILABLE_AMOUNT:
                return 503, b"text/plain", b"test hook: the bank is closed for maintenance. " * 7
        elif (
            _deposited(message_from_json(HandleEventRequest, json.loads(body)).event) == EVENT_FAILURE_AMOUNT
        ):
            failure = {"error": "test hook: the event handler failed", "code": "INTERNAL"}
            return 500, b"application/json", json.dumps(failure, separators=(",", ":")).encode()
    except (UnicodeDecodeError, ValueError, JsonShapeError):
        return None  # the handler answers a bad body itself
    return None
