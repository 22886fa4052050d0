"""Small HTTP endpoints served with a few lines of asyncio: upstream's GET /alive and GET /ready
(decision D11) on the management port, and Prometheus' GET /metrics on its own port.

Probes and scrapers send one small GET per connection; no web framework is needed on the node's
start-up path for that, and these ports must answer before anything else is up. The admin console
(docs/console.md) is served under a path prefix on the same port: its handler sees the whole request
(method, query, headers, a small body), one request per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("chiefofstate.management")

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason
_MAX_REQUEST_LINE = 8192
_MAX_HEADERS = 64
_MAX_BODY = 64 * 1024  # the console's forms are a few fields
_IO_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: str
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """A request to a prefix route: header names lower-cased, the query string undecoded."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


Route = Callable[[], Awaitable[Reply]]
PrefixRoute = Callable[[Request], Awaitable[Reply]]


class _BadRequest(Exception):
    pass


def _encode(reply: Reply) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
    head = (
        f"HTTP/1.1 {reply.status}\r\nContent-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1", "replace") + reply.body


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = await asyncio.wait_for(reader.readline(), timeout=_IO_TIMEOUT_S)
        if line in (b"\r\n", b"\n", b""):
            return headers
        if len(line) > _MAX_REQUEST_LINE or b":" not in line:
            raise _BadRequest()
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise _BadRequest()


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > _MAX_BODY:
        raise _BadRequest()
    length = int(length_text)
    return await asyncio.wait_for(reader.readexactly(length), timeout=_IO_TIMEOUT_S) if length else b""


class SmallHttpServer:
    """Answers GET on a fixed set of paths; anything else is 404 or 405."""

    def __init__(
        self, host: str, port: int, routes: Mapping[str, Route], *, reuse_port: bool = False
    ) -> None:
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._routes = dict(routes)
        self._prefix_routes: dict[str, PrefixRoute] = {}
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, reuse_port=self._reuse_port or None
        )

    def add_route(self, path: str, route: Route) -> None:
        """Serve `path` from now on (parts that start after the server, such as the cluster, add theirs)."""
        self._routes[path] = route

    def add_prefix_route(self, prefix: str, route: PrefixRoute) -> None:
        """Serve every path under `prefix` (ending with /) with `route`, any method; the path without
        its trailing slash redirects to the prefix."""
        self._prefix_routes[prefix] = route

    def _prefix_route(self, path: str) -> tuple[str, PrefixRoute] | None:
        for prefix, route in self._prefix_routes.items():
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return prefix, route
        return None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, method: str, path: str) -> Reply:
        route = self._routes.get(path)
        if route is None:
            return Reply("404 Not Found", b"not found\n")
        if method != "GET":
            return Reply("405 Method Not Allowed", b"method not allowed\n")
        return await route()

    async def _answer_prefixed(
        self,
        reader: asyncio.StreamReader,
        method: str,
        path: str,
        query: str,
        prefixed: tuple[str, PrefixRoute],
    ) -> Reply:
        prefix, route = prefixed
        if not path.startswith(prefix):
            return Reply("308 Permanent Redirect", b"", headers=(("Location", prefix),))
        try:
            headers = await _read_headers(reader)
            body = await _read_body(reader, headers)
        except _BadRequest:
            return Reply("400 Bad Request", b"bad request\n")
        return await route(Request(method, path, query, headers, body))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=_IO_TIMEOUT_S)
            parts = request_line.decode("latin-1", "replace").split()
            if len(parts) < 2 or len(request_line) > _MAX_REQUEST_LINE:
                reply = Reply("400 Bad Request", b"bad request\n")
            else:
                path, _, query = parts[1].partition("?")
                prefixed = self._prefix_route(path)
                if prefixed is None:
                    reply = await self._answer(parts[0], path)
                else:
                    reply = await self._answer_prefixed(reader, parts[0], path, query, prefixed)
            writer.write(_encode(reply))
            await asyncio.wait_for(writer.drain(), timeout=_IO_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as error:
            log.debug("request dropped: %s", error)
        finally:
            writer.close()


def management_routes(readiness: ReadinessCheck) -> dict[str, Route]:
    async def alive() -> Reply:
        return Reply("200 OK", b"alive\n")

    async def ready() -> Reply:
        reason = await readiness()
        if reason is None:
            return Reply("200 OK", b"ready\n")
        return Reply("503 Service Unavailable", f"not ready: {reason}\n".encode())

    return {"/alive": alive, "/ready": ready}


def metrics_route(exposition: Callable[[], bytes]) -> Route:
    async def metrics() -> Reply:
        return Reply("200 OK", exposition(), "text/plain; version=0.0.4; charset=utf-8")

    return metrics


class ManagementServer(SmallHttpServer):
    """GET /alive (the process runs) and GET /ready (migrated, store reachable, not shutting down)."""

    def __init__(self, host: str, port: int, readiness: ReadinessCheck, *, reuse_port: bool = False) -> None:
        # Workers share the management port: any of them answers a probe (docs/cluster.md, "Workers").
        super().__init__(host, port, management_routes(readiness), reuse_port=reuse_port)
