"""A small HTTP/1.1 client for the node's calls to an HTTP write handler: POST with a JSON body over a
bounded pool of keep-alive connections (plain TCP or TLS).

httpx costs about 4 ms of node CPU per call under load (its connection pool scans every connection on
each request, and each request passes several layers of abstraction); this client costs a small
fraction of that, which is what lets a node with an HTTP handler run close to one with a gRPC handler
(docs/performance.md, "HTTP"). It speaks only what the handler protocol needs (docs/contract.md §9):
one request at a time per connection, replies framed by Content-Length, chunked transfer encoding or
the connection's end, interim 1xx replies skipped. The caller bounds each call's time (cancelling a
call closes its connection, whose reply would otherwise be read by the next call).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from http import HTTPStatus
from typing import NamedTuple

_MAX_HEAD_BYTES = 64 * 1024  # a reply's status line and headers (asyncio's default line limit)
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class HttpClientError(Exception):
    """The exchange failed without a reply to read."""


class ConnectFailed(HttpClientError):
    """No connection could be opened (refused, unreachable, TLS handshake failed): nothing was sent."""


class ExchangeFailed(HttpClientError):
    """The request could not be sent or its reply not read whole: the handler may have seen it."""


class HttpReply(NamedTuple):
    status: int
    reason: str
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """False once the server has closed it (an idle keep-alive connection times out there)."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class HttpConnectionPool:
    """Up to `max_connections` connections to one server; a call beyond that waits for one to be free
    (within the caller's time). Idle connections are reused newest first, so a quiet period lets the
    older ones reach the server's idle timeout and close."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        max_reply_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._max_reply_bytes = max_reply_bytes
        self._free_slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._authority = (f"[{host}]" if ":" in host else host) + f":{port}"

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> HttpReply:
        """POST `body` as application/json. Raises ConnectFailed, ExchangeFailed, or UnicodeEncodeError
        / ValueError for a header HTTP cannot carry (nothing is sent then)."""
        request = self._request_head(path, len(body), headers) + body
        async with self._free_slots:
            connection = self._idle_connection() or await self._connect()
            try:
                connection.writer.write(request)
                reply, reusable = await self._read_reply(connection.reader)
            except BaseException as error:
                connection.close()  # cancelled or failed halfway: its stream is out of step
                if isinstance(error, OSError | asyncio.IncompleteReadError | asyncio.LimitOverrunError):
                    raise ExchangeFailed(_describe(error)) from None
                raise
            if reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return reply

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()

    def _request_head(self, path: str, length: int, headers: Sequence[tuple[str, str]]) -> bytes:
        lines = [
            f"POST {path} HTTP/1.1",
            f"host: {self._authority}",
            "content-type: application/json",
            f"content-length: {length}",
        ]
        for name, value in headers:
            if any(mark in name or mark in value for mark in _FORBIDDEN_IN_HEADERS) or ":" in name:
                raise ValueError(f"header {name!r} has a character HTTP cannot carry")
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("ascii")

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl_context,
                server_hostname=self._host if self._ssl_context is not None else None,
                limit=_MAX_HEAD_BYTES,
            )
        except OSError as error:  # refused, unreachable, no such host, TLS handshake (ssl.SSLError)
            raise ConnectFailed(_describe(error)) from None
        return _Connection(reader, writer)

    async def _read_reply(self, reader: asyncio.StreamReader) -> tuple[HttpReply, bool]:
        """The reply, and whether its connection can carry another request."""
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            version, status, reason = _status_line(status_line)
            if not 100 <= status < 200:
                break  # an interim reply (100 Continue) is followed by the real one
        headers: dict[str, str] = {}
        for line in header_lines:
            name, separator, value = line.partition(":")
            if not separator:
                raise ExchangeFailed(f"malformed header line in the reply: {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        reusable = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked_body(reader)
        elif "content-length" in headers:
            length = _length(headers["content-length"])
            if length > self._max_reply_bytes:
                raise ExchangeFailed(f"the reply is larger than {self._max_reply_bytes} bytes")
            body = await reader.readexactly(length)
        else:  # framed by the end of the connection
            body = await self._body_until_closed(reader)
            reusable = False
        return HttpReply(status, reason or _standard_reason(status), body), reusable

    async def _chunked_body(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = _chunk_size(size_line)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, unused
                return bytes(body)
            if len(body) + size > self._max_reply_bytes:
                raise ExchangeFailed(f"the reply is larger than {self._max_reply_bytes} bytes")
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ExchangeFailed("malformed chunked reply: a chunk does not end with CRLF")

    async def _body_until_closed(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while chunk := await reader.read(65536):
            body += chunk
            if len(body) > self._max_reply_bytes:
                raise ExchangeFailed(f"the reply is larger than {self._max_reply_bytes} bytes")
        return bytes(body)


def _status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ExchangeFailed(f"malformed status line in the reply: {line[:100]!r}")
    return version, int(code), reason.strip()


def _length(text: str) -> int:
    if not text.isdigit():
        raise ExchangeFailed(f"malformed Content-Length in the reply: {text[:40]!r}")
    return int(text)


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    try:
        size = int(text, 16)
    except ValueError:
        size = -1
    if size < 0:
        raise ExchangeFailed(f"malformed chunk size in the reply: {text[:40]!r}")
    return size


def _standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.IncompleteReadError):
        return "the server closed the connection before the whole reply arrived"
    if isinstance(error, asyncio.LimitOverrunError):
        return f"the reply's head is larger than {_MAX_HEAD_BYTES} bytes"
    return str(error) or type(error).__name__
