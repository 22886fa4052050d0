"""The write handler's HTTP client against scripted servers: reply framing, keep-alive reuse, the pool's
bound, and each way an exchange can fail."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chiefofstate.cli.processes import free_port
from chiefofstate.writeside.http_client import ConnectFailed, ExchangeFailed, HttpConnectionPool

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    first, *lines = head[:-4].split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return first, headers, body


class _Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.active = 0
        self.all_done = asyncio.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.all_done.clear()
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.script(reader, writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        finally:
            self.active -= 1
            if not self.active:
                self.all_done.set()


@contextlib.asynccontextmanager
async def _serving(script: Script) -> AsyncIterator[_Server]:
    server = _Server(script)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        # every client connection is closed by now: let the server's side of each finish
        if server.active:
            await asyncio.wait_for(server.all_done.wait(), 10)


def _answering(*replies: bytes, keep_open: bool = True) -> Callable[[_Server], Script]:
    def script_for(server: _Server) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for reply in replies:
                server.requests.append(await _read_request(reader))
                writer.write(reply)
                await writer.drain()
            if keep_open:
                await reader.read()  # until the client closes

        return script

    return script_for


@contextlib.asynccontextmanager
async def _scripted(make: Callable[[_Server], Script]) -> AsyncIterator[_Server]:
    holder: dict[str, _Server] = {}

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await make(holder["server"])(reader, writer)

    async with _serving(script) as server:
        holder["server"] = server
        yield server


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def test_a_post_sends_its_json_body_and_headers_and_reads_a_content_length_reply() -> None:
    async with _scripted(_answering(OK)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        reply = await pool.post("/v1/writeside/handleCommand", b'{"a":1}', [("x-request-id", "r-1")])
        await pool.close()
    assert (reply.status, reply.reason, reply.body) == (200, "OK", b"{}")
    first, headers, body = server.requests[0]
    assert first == "POST /v1/writeside/handleCommand HTTP/1.1"
    assert headers["content-type"] == "application/json" and headers["x-request-id"] == "r-1"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert body == b'{"a":1}'


async def test_calls_one_after_the_other_reuse_one_kept_alive_connection() -> None:
    async with _scripted(_answering(OK, OK, OK)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        for _ in range(3):
            assert (await pool.post("/", b"{}")).body == b"{}"
        await pool.close()
    assert server.connections == 1


async def test_a_chunked_reply_is_read_whole_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b'3;ext=1\r\n{"a\r\n5\r\n":12}\r\n0\r\ntrailer: x\r\n\r\n'
    )
    async with _scripted(_answering(chunked, OK)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        assert (await pool.post("/", b"{}")).body == b'{"a":12}'
        assert (await pool.post("/", b"{}")).body == b"{}"
        await pool.close()
    assert server.connections == 1


async def test_a_reply_framed_by_the_connection_end_is_read_and_the_connection_not_reused() -> None:
    unframed = b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\nit broke"
    async with _scripted(_answering(unframed, keep_open=False)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        reply = await pool.post("/", b"{}")
        assert (reply.status, reply.reason, reply.body) == (500, "Internal Server Error", b"it broke")
        assert (await pool.post("/", b"{}")).status == 500
        await pool.close()
    assert server.connections == 2


async def test_an_interim_reply_is_skipped_and_a_missing_reason_is_the_standard_one() -> None:
    interim_then_final = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 412\r\ncontent-length: 0\r\n\r\n"
    async with _scripted(_answering(interim_then_final)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        reply = await pool.post("/", b"{}")
        await pool.close()
    assert (reply.status, reply.reason, reply.body) == (412, "Precondition Failed", b"")


async def test_an_idle_connection_the_server_closed_is_replaced_by_a_new_one() -> None:
    async with _scripted(_answering(OK, keep_open=False)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        await pool.post("/", b"{}")
        for _ in range(100):  # until the client has seen the server's close
            await asyncio.sleep(0.01)
            if pool._idle and not pool._idle[0].usable():
                break
        assert (await pool.post("/", b"{}")).body == b"{}"
        await pool.close()
    assert server.connections == 2


async def test_a_refused_connection_is_connect_failed() -> None:
    pool = HttpConnectionPool("127.0.0.1", free_port())
    with pytest.raises(ConnectFailed):
        await pool.post("/", b"{}")


async def test_a_connection_lost_before_the_reply_is_exchange_failed() -> None:
    async def vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}")  # 8 bytes short

    async with _serving(vanish) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        with pytest.raises(ExchangeFailed, match="closed the connection"):
            await pool.post("/", b"{}")
        await pool.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"NONSENSE\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
    ],
)
async def test_a_malformed_reply_is_exchange_failed(reply: bytes) -> None:
    async with _scripted(_answering(reply)) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        with pytest.raises(ExchangeFailed, match="malformed"):
            await pool.post("/", b"{}")
        await pool.close()


async def test_a_reply_over_the_limit_is_refused_however_it_is_framed() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + b"x" * 2000
    chunked_head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    big_chunked = chunked_head + b"7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n"
    for reply in (big, big_chunked):
        async with _scripted(_answering(reply)) as server:
            pool = HttpConnectionPool("127.0.0.1", server.port, max_reply_bytes=1000)
            with pytest.raises(ExchangeFailed, match="larger than 1000 bytes"):
                await pool.post("/", b"{}")
            await pool.close()


async def test_a_header_value_that_could_split_the_request_is_refused_before_sending() -> None:
    pool = HttpConnectionPool("127.0.0.1", free_port())
    with pytest.raises(ValueError, match="cannot carry"):
        await pool.post("/", b"{}", [("x-a", "1\r\nx-b: 2")])
    with pytest.raises(UnicodeEncodeError):
        await pool.post("/", b"{}", [("x-a", "é")])


async def test_the_pool_holds_at_most_its_bound_of_connections_and_the_rest_wait() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await release.wait()
            writer.write(OK)

    async with _serving(slow) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port, max_connections=2)
        calls = [asyncio.create_task(pool.post("/", b"{}")) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert server.connections == 2 and not any(call.done() for call in calls)
        release.set()
        replies = await asyncio.gather(*calls)
        await pool.close()
    assert [reply.status for reply in replies] == [200] * 5
    assert server.connections == 2


async def test_a_cancelled_call_closes_its_connection_so_no_later_call_reads_its_reply() -> None:
    answer_late = asyncio.Event()

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await answer_late.wait()
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n"late"')
        await reader.read()

    async with _serving(late) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.post("/", b"{}")
        answer_late.set()
        await pool.close()
        assert pool._idle == []
    assert server.connections == 1


async def test_tls_to_a_server_the_context_does_not_trust_is_connect_failed() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"not a TLS handshake at all\r\n\r\n")
        await reader.read()

    async with _serving(never) as server:
        pool = HttpConnectionPool("127.0.0.1", server.port, ssl_context=ssl.create_default_context())
        with pytest.raises(ConnectFailed):
            async with asyncio.timeout(10):
                await pool.post("/", b"{}")
        await pool.close()
