"""The management port's prefix routes (the console's): whole requests, bounded, one per connection."""

from __future__ import annotations

import asyncio

from chiefofstate.api.management import ManagementServer, Reply, Request


async def _ready() -> str | None:
    return None


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return reply


async def test_a_prefix_route_sees_method_query_headers_and_body() -> None:
    seen: list[Request] = []

    async def route(request: Request) -> Reply:
        seen.append(request)
        return Reply("200 OK", b"hello", headers=(("X-Seen", "yes"),))

    server = ManagementServer("127.0.0.1", 0, _ready)
    server.add_prefix_route("/admin/", route)
    await server.start()
    try:
        reply = await _exchange(
            server.port,
            b"POST /admin/act?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nOrigin: http://h\r\n\r\na=b&c",
        )
        assert reply.startswith(b"HTTP/1.1 200 OK") and b"X-Seen: yes" in reply and reply.endswith(b"hello")
        (request,) = seen
        assert (request.method, request.path, request.query, request.body) == (
            "POST",
            "/admin/act",
            "x=1",
            b"a=b&c",
        )
        assert request.headers["origin"] == "http://h"
        redirect = await _exchange(server.port, b"GET /admin HTTP/1.1\r\n\r\n")
        assert redirect.startswith(b"HTTP/1.1 308") and b"Location: /admin/" in redirect
        alive = await _exchange(server.port, b"GET /alive HTTP/1.1\r\n\r\n")
        assert alive.startswith(b"HTTP/1.1 200") and alive.endswith(b"alive\n")
    finally:
        await server.close()


async def test_an_oversized_body_or_a_malformed_header_is_a_bad_request() -> None:
    async def route(request: Request) -> Reply:
        raise AssertionError("not reached")

    server = ManagementServer("127.0.0.1", 0, _ready)
    server.add_prefix_route("/admin/", route)
    await server.start()
    try:
        too_big = await _exchange(server.port, b"POST /admin/x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
        assert too_big.startswith(b"HTTP/1.1 400")
        no_colon = await _exchange(server.port, b"GET /admin/ HTTP/1.1\r\nnot a header\r\n\r\n")
        assert no_colon.startswith(b"HTTP/1.1 400")
        many = b"".join(b"X-%d: y\r\n" % number for number in range(100))
        too_many = await _exchange(server.port, b"GET /admin/ HTTP/1.1\r\n" + many + b"\r\n")
        assert too_many.startswith(b"HTTP/1.1 400")
    finally:
        await server.close()
