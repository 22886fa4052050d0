"""Upstream's management endpoints, GET /alive and GET /ready (decision D11), on a tiny HTTP server.

Kubernetes probes send one small request per connection; a few lines of asyncio serve that
without a web framework on the node's start-up path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("chiefofstate.management")

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason
_MAX_REQUEST_LINE = 8192


def _response(status: str, body: str) -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


class ManagementServer:
    def __init__(self, host: str, port: int, readiness: ReadinessCheck) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, method: str, path: str) -> bytes:
        if path not in ("/alive", "/ready"):
            return _response("404 Not Found", "not found\n")
        if method != "GET":
            return _response("405 Method Not Allowed", "method not allowed\n")
        if path == "/alive":
            return _response("200 OK", "alive\n")
        reason = await self._readiness()
        if reason is None:
            return _response("200 OK", "ready\n")
        return _response("503 Service Unavailable", f"not ready: {reason}\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1", "replace").split()
            if len(parts) < 2 or len(request_line) > _MAX_REQUEST_LINE:
                writer.write(_response("400 Bad Request", "bad request\n"))
            else:
                writer.write(await self._answer(parts[0], parts[1].split("?", 1)[0]))
            await asyncio.wait_for(writer.drain(), timeout=5)
        except (TimeoutError, ConnectionError) as error:
            log.debug("management request dropped: %s", error)
        finally:
            writer.close()
