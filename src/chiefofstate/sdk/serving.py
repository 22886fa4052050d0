"""Running a handler: `await start(handler, ...)` inside a program that has its own event loop, or
`serve(handler, ...)` as a program's main, which runs until SIGTERM or SIGINT.

    serve(Bank(), port=50051)                  # gRPC WriteSideHandlerService (+ health, reflection)
    serve(Bank(), port=50052, protocol="http") # the HTTP write-handler protocol
    serve(Balances(), port=50053)              # a read handler: ReadSideHandlerService
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from grpc_health.v1 import health
from starlette.middleware import Middleware

from chiefofstate.sdk.grpc_serving import start_grpc
from chiefofstate.sdk.http_serving import HttpHandlerServer
from chiefofstate.sdk.read import ReadHandler
from chiefofstate.sdk.write import WriteHandler

Protocol = Literal["grpc", "http"]


@dataclass
class RunningHandler:
    """A started handler server; `port` is the bound one, also when 0 was asked for."""

    host: str
    port: int
    protocol: Protocol
    _grpc: tuple[grpc.aio.Server, health.aio.HealthServicer] | None = None
    _http: HttpHandlerServer | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Stop taking calls; those in flight get up to `grace` seconds to finish."""
        if self._grpc is not None:
            server, health_servicer = self._grpc
            await health_servicer.enter_graceful_shutdown()
            await server.stop(grace)
        if self._http is not None:
            await self._http.stop(grace)


def _check(handler: object, protocol: str) -> None:
    if not isinstance(handler, WriteHandler | ReadHandler):
        raise TypeError(f"expected a WriteHandler or a ReadHandler, got {type(handler).__name__}")
    if getattr(type(handler), "state_type", None) is None:
        raise TypeError(f"{type(handler).__name__} has no state type: derive it from WriteHandler[YourState]")
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")


async def start(
    handler: WriteHandler[Any] | ReadHandler[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    protocol: Protocol = "grpc",
    http_middleware: Sequence[Middleware] = (),
) -> RunningHandler:
    """Serve `handler` on host:port (0 = any free port) and return once it accepts calls.

    `http_middleware` (Starlette middleware, outermost first) wraps the HTTP protocol's app: for what
    must see the raw request or answer it itself. Raises OSError when the address cannot be bound,
    TypeError for a handler without a state type."""
    _check(handler, protocol)
    if protocol == "grpc":
        server, health_servicer, bound = await start_grpc(handler, host, port)
        return RunningHandler(host, bound, protocol, _grpc=(server, health_servicer))
    http = HttpHandlerServer(handler, host, port, http_middleware)
    await http.start()
    return RunningHandler(host, http.port, protocol, _http=http)


async def serve_until_stopped(
    handler: WriteHandler[Any] | ReadHandler[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    protocol: Protocol = "grpc",
    stop: asyncio.Event | None = None,
    http_middleware: Sequence[Middleware] = (),
    name: str | None = None,
) -> None:
    """Serve until `stop` is set, or (without one) until SIGTERM or SIGINT. `name` (the handler's class
    name by default) starts the line announcing the port."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
    running = await start(handler, host=host, port=port, protocol=protocol, http_middleware=http_middleware)
    try:
        # one line a supervisor or a test can wait for; it names the port actually bound
        print(f"{name or type(handler).__name__} ({protocol}) listening on {running.address}", flush=True)
        await stop.wait()
    finally:
        await running.stop()


def serve(
    handler: WriteHandler[Any] | ReadHandler[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    protocol: Protocol = "grpc",
    http_middleware: Sequence[Middleware] = (),
    name: str | None = None,
) -> None:
    """Run `handler` as this program's server until SIGTERM or SIGINT; exits with status 1 (and a line on
    stderr) when the address cannot be bound. Once it accepts calls it prints one line, `<name>
    (<protocol>) listening on HOST:PORT`, `name` being the handler's class name unless given."""
    _check(handler, protocol)
    try:
        asyncio.run(
            serve_until_stopped(
                handler, host=host, port=port, protocol=protocol, http_middleware=http_middleware, name=name
            )
        )
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
