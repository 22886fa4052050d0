"""Runs an ASGI app with uvicorn on the node's own event loop, as a task the node owns.

uvicorn's `Server.serve()` normally installs its own SIGINT/SIGTERM handlers, which would replace
the node's and break the node's orderly shutdown; here the node keeps the signals and tells the
server when to stop. The listening socket is bound before the task starts, so a port in use fails
`start()` with OSError instead of uvicorn's `sys.exit` inside a background task.

With TLS, each accepted connection gets asyncio's TLS protocol here, around the HTTP protocol, rather than
through uvicorn's `ssl=` (which leaves asyncio's fixed 60 s handshake timeout): a client that connects and
never finishes its handshake is dropped after COS_HTTP_TLS_HANDSHAKE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from asyncio import sslproto
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.api.http_limits import LimitedHttpProtocol, limited_protocol
from chiefofstate.config.http_limits import HttpLimits

log = logging.getLogger("chiefofstate.api.http")

_STARTUP_TIMEOUT_S = 10.0


def _drop_terminal_colours(record: logging.LogRecord) -> bool:
    # uvicorn attaches an ANSI-coloured copy of some messages, which would land in JSON logs.
    record.__dict__.pop("color_message", None)
    return True


class _NodeOwnedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the node handles SIGTERM and SIGINT itself


def bind_listening_socket(
    address: str, port: int, backlog: int = 2048, *, reuse_port: bool = False
) -> socket.socket:
    """A TCP listener whose accepted connections get TCP_NODELAY; with `reuse_port`, one that sibling
    workers bind too (SO_REUSEPORT: the kernel spreads the connections among them).

    asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP, and `socket.create_server`
    leaves it 0; without it Nagle's algorithm holds a response's body behind its head until the
    client's delayed ACK, adding ~40 ms to every keep-alive request.
    """
    family, kind, proto, _, bind_to = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(bind_to)
        listener.listen(backlog)
    except BaseException:
        listener.close()
        raise
    return listener


class HttpServer:
    def __init__(
        self,
        app: ASGIApp,
        address: str,
        port: int,
        shutdown_timeout_s: float,
        *,
        limits: HttpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._app = app
        self._ssl_context = ssl_context
        self._limits = limits or HttpLimits()
        self._reuse_port = reuse_port
        self._address = address
        self._requested_port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        self._server: _NodeOwnedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        logging.getLogger("uvicorn.error").addFilter(_drop_terminal_colours)  # idempotent
        listener = bind_listening_socket(self._address, self._requested_port, reuse_port=self._reuse_port)
        self.port = int(listener.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            log_config=None,  # the node's logging configuration applies
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            http=self._protocol_factory(),  # uvicorn calls it like a class
            timeout_keep_alive=self._limits.keep_alive_timeout_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=max(1, round(self._shutdown_timeout_s)),
        )
        server = self._server = _NodeOwnedServer(config)
        self._task = asyncio.create_task(server.serve(sockets=[listener]), name="http-api")
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT_S):
                while not server.started:
                    if self._task.done():
                        self._task.result()  # raises what stopped it
                        raise OSError(f"the HTTP server on {self._address}:{self.port} stopped at start")
                    await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            listener.close()
            raise

    def _protocol_factory(self) -> Any:
        """What uvicorn instantiates per connection: the limited HTTP protocol, inside TLS when set."""
        http = limited_protocol(self._limits)
        context = self._ssl_context
        if context is None:
            return http
        handshake_timeout_s = self._limits.tls_handshake_timeout_s

        def tls_protocol(**uvicorn_arguments: Any) -> asyncio.BaseProtocol:
            inner: LimitedHttpProtocol = http(**uvicorn_arguments)
            # What asyncio's create_server(ssl=...) builds for each connection, with our timeout.
            # No waiter: a failed or timed-out handshake closes the connection by itself. The stubs
            # want a future and whole seconds; asyncio takes None and any positive float.
            protocol: Any = sslproto.SSLProtocol
            return protocol(  # type: ignore[no-any-return]
                asyncio.get_running_loop(),
                inner,
                context,
                None,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout_s,
            )

        return tls_protocol

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the shutdown timeout, then cancel."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            # uvicorn itself cancels requests still running after timeout_graceful_shutdown.
            await asyncio.wait_for(asyncio.shield(task), self._shutdown_timeout_s + 5)
        except TimeoutError:
            log.warning("HTTP server did not stop within the shutdown timeout; cancelling it")
        except Exception:
            log.exception("HTTP server failed while stopping")
        finally:
            server.force_exit = True
            await cancel_and_wait(task)
            self._server = self._task = None
