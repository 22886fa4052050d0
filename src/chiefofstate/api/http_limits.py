"""Bounds on what one HTTP client can hold: connection count, header size, time to send the headers and
the body, and time idle between requests (docs/operations.md, "HTTP connection limits").

uvicorn's httptools protocol closes a kept-alive connection only after a response: a connection that
never sends a byte, a client trickling its headers one byte at a time, or one sending an endless header
would otherwise hold a socket and the memory of its partial request for ever. This protocol subclass
arms a deadline for each phase of a request and refuses an oversized head with 431. It leans on uvicorn's
protocol internals (its parser callbacks, keep-alive timer and request cycle); tests/integration/
test_http_limits.py is what tells whether a new uvicorn still fits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chiefofstate.config.http_limits import HttpLimits

log = logging.getLogger("chiefofstate.api.http")

# After the body deadline the application has had its own (equal) timeout to answer with a clear 400;
# this margin lets that answer go out before the connection is cut for a route that never reads.
_BODY_DEADLINE_MARGIN_S = 1.0


class _HeadTooLarge(Exception):
    pass


def _plain_response(status: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and sizes of `HttpLimits`.

    Phases of a connection and the deadline each one has: waiting for a request (the keep-alive timeout,
    from the connection's opening or the last response), reading the head (the header timeout, from
    the request's first byte), reading the body (the body timeout, from the end of the head). A request
    the application is working on has no deadline here: the command timeout bounds it.
    """

    limits = HttpLimits()  # replaced per server by `limited_protocol`

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._head_received = 0  # raw bytes of reads that ended with the head still open
        self._head_parsed = 0  # request line and headers the parser has handed over
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before it costs anything more than this reply; the client may retry later.
            self._refused = True
            self.transport = transport
            transport.write(
                _plain_response(
                    "503 Service Unavailable",
                    f"the server holds its maximum of {self.limits.max_connections} connections",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response; a connection that never sends a
        # request gets the same one from its opening.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._reject_head()
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._reading_head:
            # The parser keeps an unfinished header in its own buffer without telling us, so the raw
            # bytes received while the head is open are what bound it.
            self._head_received += len(data)
            if self._head_received > self.limits.max_header_bytes:
                self._reject_head()

    # Parser callbacks, around uvicorn's own.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_received = self._head_parsed = 0
        self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.limits.body_timeout_s + _BODY_DEADLINE_MARGIN_S, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def shutdown(self) -> None:
        if self._refused:
            return
        if self._reading_head:
            self.transport.close()  # a partial head is no request in flight
            return
        super().shutdown()

    # Deadlines
    def _count_head(self, size: int) -> None:
        """Heads that arrive whole in one read are measured from the parser's callbacks."""
        self._head_parsed += size
        if self._head_parsed > self.limits.max_header_bytes:
            raise _HeadTooLarge

    def _arm(self, delay_s: float, action: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, action)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._reading_head and not self.transport.is_closing():
            self._send_and_close(
                "408 Request Timeout",
                f"the request headers did not arrive within {self.limits.header_timeout_s:g}s",
            )

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.cycle.response_started:
            self.transport.close()
        else:
            self._send_and_close(
                "408 Request Timeout",
                f"the request body did not arrive within {self.limits.body_timeout_s:g}s",
            )

    def _reject_head(self) -> None:
        self._disarm()
        self._reading_head = False
        if not self.transport.is_closing():
            self._send_and_close(
                "431 Request Header Fields Too Large",
                f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
            )

    def _send_and_close(self, status: str, message: str) -> None:
        log.info("HTTP connection from %s closed: %s", self.client, message)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the application's answer, if any, has nowhere to go
        self.transport.write(_plain_response(status, message))
        self.transport.close()


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to one server's limits."""
    return type("LimitedHttpProtocolOfServer", (LimitedHttpProtocol,), {"limits": limits})
