"""The bank's write handler: a gRPC server implementing `chief_of_state.v1.WriteSideHandlerService`.

Run it with `python -m chiefofstate_examples.bank.write_handler [--host 127.0.0.1] [--port 50051]`. Once it
accepts calls it prints one line, `bank write handler listening on HOST:PORT`, to stdout; SIGTERM or SIGINT
stops it (exit 0). `--port 0` picks a free port, which the line reports. It also serves the standard gRPC
health service (`grpc.health.v1.Health`) for the whole server ("") and for the write-side service, and
gRPC server reflection, through which `cos` decodes the bank's events and states (docs/cli.md).

Refused commands become gRPC statuses (docs/contract.md §3.10 passes them to the CoS caller unchanged).
Insufficient
funds is `FAILED_PRECONDITION` with a rich `google.rpc.ErrorInfo` detail (reason `INSUFFICIENT_FUNDS`,
domain `bank.example`, metadata `balance` and `requested` in cents) in the `grpc-status-details-bin`
trailer, so tests can check that CoS carries rich details through.

TEST HOOKS — fault injection for CoS's own tests. All are off unless the environment turns them on; never
set these in a real deployment:

* `BANK_HANDLER_DELAY_MS=N` — every `HandleCommand` sleeps N milliseconds before answering (deadline and
  timeout tests, docs/contract.md §3.11 and D4).
* `BANK_HANDLER_FAULTS=1` — enables the magic deposit amounts, applied when `HandleEvent` folds the
  `MoneyDeposited` event of a `Deposit`:
  * `666_666` cents → the reply's `resulting_state` is a `google.protobuf.StringValue` instead of a
    `bank.v1.BankAccount` (proto validation tests, §3.12: expect `invalid state: ...`);
  * `777_777` cents → the reply has no `resulting_state` at all (§3.8 step 3: expect
    `event handler replied with empty state`).
  The account must exist first: a deposit to a missing account is refused before any event is made.

* `BANK_HANDLER_LOG_CALLS=1` — prints one JSON line per call to stdout (`{"call": "HandleCommand",
  "metadata": {...}, "prior_type": ..., "revision": ...}`), so CoS tests can see which headers and which
  prior state each call received (docs/contract.md §3.3–3.5).

`serve()` reads the same variables unless it is given a `FaultInjection` explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import DecodeError

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.trace import SpanKind

from chiefofstate.config.tracing import tracing_settings
from chiefofstate.gen.chief_of_state.v1 import writeside_pb2, writeside_pb2_grpc
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.telemetry.tracing import TRACING_OFF, Tracing
from chiefofstate_examples.bank.domain import BankError, InsufficientFunds, decide, evolve
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50051
SERVICE_NAME: Final = writeside_pb2.DESCRIPTOR.services_by_name["WriteSideHandlerService"].full_name
ERROR_DOMAIN: Final = "bank.example"
INSUFFICIENT_FUNDS_REASON: Final = "INSUFFICIENT_FUNDS"

# TEST HOOK amounts (cents), honoured only with BANK_HANDLER_FAULTS=1
WRONG_STATE_TYPE_AMOUNT: Final = 666_666
NO_STATE_AMOUNT: Final = 777_777

_DELAY_VARIABLE: Final = "BANK_HANDLER_DELAY_MS"
_FAULTS_VARIABLE: Final = "BANK_HANDLER_FAULTS"
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class FaultInjection:
    """TEST HOOKS: which faults the handler injects (see the module docstring). The default injects none."""

    command_delay_ms: int = 0
    magic_deposit_amounts: bool = False
    log_calls: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> FaultInjection:
        """Read BANK_HANDLER_DELAY_MS and BANK_HANDLER_FAULTS; ValueError names a bad variable."""
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


def _log_call(
    name: str, context: grpc.aio.ServicerContext[Any, Any], prior: any_pb2.Any, meta: MetaData
) -> None:
    """TEST HOOK: one JSON line naming the call, its x- metadata and the prior state it was given."""
    metadata = {
        key: value.hex() if isinstance(value, bytes) else value
        for key, value in context.invocation_metadata() or ()
        if key.startswith("x-")
    }
    line = {
        "call": name,
        "metadata": metadata,
        "prior_type": prior.type_url,
        "revision": meta.revision_number,
    }
    print(json.dumps(line), flush=True)


class BankWriteHandler(writeside_pb2_grpc.WriteSideHandlerServiceServicer):
    """Adapts the pure rules in domain.py to the WriteSideHandlerService rpcs (docs/contract.md §2.3)."""

    def __init__(self, faults: FaultInjection | None = None, tracing: Tracing = TRACING_OFF) -> None:
        self._faults = FaultInjection() if faults is None else faults
        # Joins CoS's trace: the node sends its span context in the call's metadata (OTEL_PROPAGATORS).
        self._tracing = tracing

    def _span(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> AbstractContextManager[object]:
        metadata = list(context.invocation_metadata() or ())
        return self._tracing.span(name, kind=SpanKind.SERVER, parent=self._tracing.extract(metadata))

    async def HandleCommand(
        self,
        request: HandleCommandRequest,
        context: grpc.aio.ServicerContext[HandleCommandRequest, HandleCommandResponse],
    ) -> HandleCommandResponse:
        if self._faults.log_calls:
            _log_call("HandleCommand", context, request.prior_state, request.prior_event_meta)
        if self._faults.command_delay_ms:
            # TEST HOOK: lets CoS tests hit COS_GRPC_CALLS_TIMEOUT / the caller's deadline
            await asyncio.sleep(self._faults.command_delay_ms / 1000)
        try:
            with self._span("bank.HandleCommand", context):
                events = decide(request.command, request.prior_state, request.prior_event_meta)
        except BankError as error:
            await _abort(context, error)
        # `events`, never the deprecated single `event` field (§2.3); [] is a no-op for CoS (§3.7)
        return HandleCommandResponse(events=events)

    async def HandleEvent(
        self,
        request: HandleEventRequest,
        context: grpc.aio.ServicerContext[HandleEventRequest, HandleEventResponse],
    ) -> HandleEventResponse:
        if self._faults.log_calls:
            _log_call("HandleEvent", context, request.prior_state, request.event_meta)
        faulty = injected_event_fault(self._faults, request.event)
        if faulty is not None:
            return faulty
        try:
            with self._span("bank.HandleEvent", context):
                state = evolve(request.event, request.prior_state, request.event_meta)
        except BankError as error:
            await _abort(context, error)
        return HandleEventResponse(resulting_state=state)


def injected_event_fault(faults: FaultInjection, event: any_pb2.Any) -> HandleEventResponse | None:
    """TEST HOOK: wrong or missing states that CoS must refuse; see the module docstring.

    Shared with the HTTP variant (http_write_handler.py)."""
    if not faults.magic_deposit_amounts:
        return None
    deposited = bank_pb2.MoneyDeposited()
    try:
        if not event.Unpack(deposited):
            return None
    except DecodeError:
        return None  # evolve reports malformed events properly
    if deposited.amount == WRONG_STATE_TYPE_AMOUNT:
        wrong_state = any_pb2.Any()
        wrong_state.Pack(wrappers_pb2.StringValue(value="test hook: not a bank.v1.BankAccount"))
        return HandleEventResponse(resulting_state=wrong_state)
    if deposited.amount == NO_STATE_AMOUNT:
        return HandleEventResponse()
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: BankError) -> NoReturn:
    """The one place bank failures become gRPC statuses."""
    if isinstance(error, InsufficientFunds):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=INSUFFICIENT_FUNDS_REASON,
                domain=ERROR_DOMAIN,
                metadata={"balance": str(error.balance), "requested": str(error.requested)},
            )
        )
        status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=error.message, details=[detail])
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(error.code, error.message)


@dataclass(frozen=True)
class RunningHandler:
    """A started handler server; `port` is the bound one, even when 0 was asked for."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    host: str
    port: int
    tracing: Tracing = TRACING_OFF

    @property
    def address(self) -> str:
        """`host:port` as a gRPC target (IPv6 hosts bracketed)."""
        return _target(self.host, self.port)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.tracing.shutdown()


async def serve(host: str, port: int, *, faults: FaultInjection | None = None) -> RunningHandler:
    """Start the handler on host:port (0 = any free port) and return once it accepts calls.

    `faults=None` reads the TEST HOOK variables from the environment; pass `FaultInjection()` for none.
    Raises OSError when the address cannot be bound.
    """
    tracing = Tracing(tracing_settings(os.environ, "bank-write-handler"))
    handler = BankWriteHandler(FaultInjection.from_environment() if faults is None else faults, tracing)
    # grpc turns SO_REUSEPORT on by default, so a second handler on a busy port would start and silently
    # share its calls; a test or demo that picks a port must get a bind error instead
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    writeside_pb2_grpc.add_WriteSideHandlerServiceServicer_to_server(handler, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Server reflection lets tools that hold none of the bank's generated code (`cos events`, `cos send`,
    # grpcurl) find its message types: bank.v1 is in this process's descriptor pool, so every type the
    # handler reads or writes can be asked for by name.
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    target = _target(host, port)
    try:
        bound_port = server.add_insecure_port(target)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen on {target}: {error}") from error
    if bound_port == 0:  # older grpc releases reported a failed bind as port 0
        raise OSError(f"cannot listen on {target}: is the port already in use?")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningHandler(server=server, health=health_servicer, host=host, port=bound_port, tracing=tracing)


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _run_until_signalled(host: str, port: int, faults: FaultInjection) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    running = await serve(host, port, faults=faults)
    try:
        # tests and the demo wait for this exact line before they call the handler
        print(f"bank write handler listening on {running.address}", flush=True)
        await stop_requested.wait()
    finally:
        await running.stop()


def handler_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    default_port: int,
    run: Callable[[str, int, FaultInjection], Coroutine[Any, Any, None]],
) -> int:
    """The command line shared by the bank's write handlers (gRPC and HTTP); returns the exit code:
    0 after SIGTERM/SIGINT, 1 when the address cannot be bound, 2 for a bad test-hook variable."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port to listen on, 0 = any free one (default {default_port})",
    )
    args = parser.parse_args(argv)
    try:
        faults = FaultInjection.from_environment()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args.host, args.port, faults))
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.write_handler`; returns the exit code."""
    return handler_main(
        argv,
        prog="python -m chiefofstate_examples.bank.write_handler",
        description="Bank example write handler for Chief of State (gRPC WriteSideHandlerService).",
        default_port=DEFAULT_PORT,
        run=_run_until_signalled,
    )


if __name__ == "__main__":
    sys.exit(main())
