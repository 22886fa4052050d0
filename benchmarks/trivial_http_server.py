"""A trivial keep-alive HTTP/1.1 server, run in its own process, against which an HTTP benchmark client
proves its headroom: a client that cannot go much faster than the node against a server doing nothing
would measure itself rather than the node (docs/performance.md, "HTTP").

    python -m benchmarks.trivial_http_server [--port 0]

Prints `listening on 127.0.0.1:PORT` once it accepts connections. Every request, whatever its method and
path, gets the same small JSON body of the size of a GetState answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import uvloop

# about the size of the bank's GetState answer: a base64 Any and the entity's meta
_BODY = (
    b'{"state":"Ci90eXBlLmdvb2dsZWFwaXMuY29tL2JhbmsudjEuQmFua0FjY291bnQSCAoBQhDoBxgB",'
    b'"meta":{"entity_id":"http-0","revision_number":42,"revision_date":"2026-01-01T00:00:00.120Z"}}'
)
_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


class _Answering(asyncio.Protocol):
    """Answers each complete request (head, then a Content-Length body) with the fixed reply."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a TCP transport: uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in buffer[:end].split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            assert self._transport is not None
            self._transport.write(_ANSWER)
        self._buffer = buffer


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answering, "127.0.0.1", port)
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trivial_http_server")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port))  # the node runs on uvloop too
    return 0


if __name__ == "__main__":
    sys.exit(main())
