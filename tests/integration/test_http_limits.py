"""The HTTP API's connection limits against a real `cos serve` (docs/operations.md, "HTTP connection
limits"): idle connections, slowloris clients and endless headers are closed within the configured
bounds while another client's GetState calls keep being answered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from chiefofstate_examples.bank import client as bank

from chiefofstate.cli.processes import Process
from tests.integration.conftest import NodeFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)

KEEP_ALIVE_S = 2.0
HEADER_TIMEOUT_S = 3.0
MAX_HEADER = 16 * 1024
# What a busy two-core machine may add to a bound before the close is seen here.
SLACK_S = 20.0
STATE_PATH = "/v1/entities/acc-1/state"
# GetState every 50 ms on one kept-alive connection until stdin closes; prints latencies and failures.
GOOD_CLIENT = """
import json, sys, threading, time, httpx
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
latencies, failures = [], []
with httpx.Client(timeout=30) as client:
    while not done.is_set():
        started = time.monotonic()
        try:
            response = client.get(sys.argv[1])
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
        except httpx.HTTPError as error:
            failures.append(repr(error))
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


@dataclass
class Closed:
    """When each abusive connection was opened or began its request, and when it was seen closed."""

    began: list[float] = field(default_factory=list)
    closed_after_s: list[float] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)

    def record(self, began: float, reply: bytes) -> None:
        self.closed_after_s.append(time.monotonic() - began)
        self.replies.append(reply)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def idle_connection(port: int, closed: Closed) -> None:
    began = time.monotonic()  # before connecting: the server's clock for it starts later than this
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reply = await _read_until_closed(reader)
    closed.record(began, reply)
    writer.close()


async def slowloris(port: int, closed: Closed) -> None:
    """A request line, then one more header line every half second, never the blank line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    reading = asyncio.create_task(_read_until_closed(reader))
    with contextlib.suppress(ConnectionError):
        writer.write(f"GET {STATE_PATH} HTTP/1.1\r\nHost: cos\r\n".encode())
        while not reading.done():
            await asyncio.sleep(0.5)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
    closed.record(began, await reading)
    writer.close()


async def endless_header(port: int, closed: Closed) -> None:
    """1 MiB of one header value, sent in 64 KiB pieces, never finished."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    reading = asyncio.create_task(_read_until_closed(reader))
    with contextlib.suppress(ConnectionError):
        writer.write(f"GET {STATE_PATH} HTTP/1.1\r\nHost: cos\r\nX-Big: ".encode())
        for _ in range(16):
            if reading.done():
                break
            writer.write(b"a" * 65536)
            await writer.drain()
            await asyncio.sleep(0.05)
    closed.record(began, await reading)
    writer.close()


@pytest.fixture
async def limited_node(node_factory: NodeFactory) -> AsyncIterator[Process]:
    node = node_factory(
        COS_SERVER_PROTOCOL="http",
        COS_HTTP_KEEP_ALIVE_TIMEOUT=f"{KEEP_ALIVE_S:g}s",
        COS_HTTP_HEADER_TIMEOUT=f"{HEADER_TIMEOUT_S:g}s",
        COS_HTTP_BODY_TIMEOUT="3s",
        COS_HTTP_MAX_HEADER_SIZE=str(MAX_HEADER),
        COS_HTTP_MAX_CONNECTIONS="3000",
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", timeout=10) as client:
        opened = await client.post(
            "/v1/commands/acc-1/process",
            json={"command": base64.b64encode(bank.open_account("Ann", 10).SerializeToString()).decode()},
        )
        assert opened.status_code == 200, opened.text
    yield node


@sqlite_only
async def test_idle_slow_and_oversized_connections_are_closed_while_get_state_stays_served(
    limited_node: Process,
) -> None:
    port = limited_node.ports["http"]
    stop = asyncio.Event()
    # The good client is a process of its own, so that what it measures is the node's delay and not
    # this test's event loop, busy with 2,400 sockets.
    good = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GOOD_CLIENT,
        f"http://127.0.0.1:{port}{STATE_PATH}",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    rss_before = rss_mb(limited_node.popen.pid)
    rss_peak = rss_before

    async def watch_memory() -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, rss_mb(limited_node.popen.pid))
            await asyncio.sleep(0.2)

    idle, slow, oversized = Closed(), Closed(), Closed()
    memory = asyncio.create_task(watch_memory())
    await asyncio.sleep(1.0)  # the good client holds its kept-alive connection before the abuse
    abusers: list[asyncio.Task[None]] = []
    for batch in range(20):  # 2,000 idle connections, opened 100 at a time
        opening = [asyncio.create_task(idle_connection(port, idle)) for _ in range(100)]
        abusers.extend(opening)
        await asyncio.sleep(0.05 if batch else 0.2)
    abusers.extend(asyncio.create_task(slowloris(port, slow)) for _ in range(300))
    abusers.extend(asyncio.create_task(endless_header(port, oversized)) for _ in range(100))
    async with asyncio.timeout(KEEP_ALIVE_S + HEADER_TIMEOUT_S + 3 * SLACK_S):
        await asyncio.gather(*abusers)
    await asyncio.sleep(1.0)  # a last few calls after the abuse
    stop.set()
    await memory
    output, _ = await asyncio.wait_for(good.communicate(b""), 30)
    outcome = json.loads(output)
    latencies, failures = outcome["latencies"], outcome["failures"]

    assert len(idle.closed_after_s) == 2000 and max(idle.closed_after_s) < KEEP_ALIVE_S + SLACK_S
    assert min(idle.closed_after_s) >= KEEP_ALIVE_S * 0.9, "idle connections must get their keep-alive time"
    assert len(slow.closed_after_s) == 300 and max(slow.closed_after_s) < HEADER_TIMEOUT_S + SLACK_S
    # A reply can be lost to a reset when a header line crosses the close; most must be the 408.
    timed_out = [reply for reply in slow.replies if reply.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 150, slow.replies[:3]
    assert len(oversized.closed_after_s) == 100 and max(oversized.closed_after_s) < SLACK_S
    assert all(not reply or reply.startswith(b"HTTP/1.1 431") for reply in oversized.replies)
    # Without the header bound these 100 connections held 1 MiB each (over 100 MB).
    assert rss_peak - rss_before < 60, f"node grew from {rss_before:.0f} MB to {rss_peak:.0f} MB"

    assert not failures, failures[:5]
    assert len(latencies) >= 20
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"GetState under abuse: {len(latencies)} calls, median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms; node RSS {rss_before:.0f} -> "
        f"peak {rss_peak:.0f} MB"
    )
    assert ordered[-1] < 5.0, f"a GetState took {ordered[-1]:.2f}s"


@sqlite_only
async def test_a_whole_head_over_the_limit_is_refused_with_431(limited_node: Process) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited_node.ports["http"])
    writer.write(f"GET {STATE_PATH} HTTP/1.1\r\nHost: cos\r\nX-Big: {'a' * MAX_HEADER}\r\n\r\n".encode())
    reply = await asyncio.wait_for(_read_until_closed(reader), SLACK_S)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert f"exceed {MAX_HEADER} bytes".encode() in reply


@sqlite_only
async def test_a_body_that_never_finishes_gets_a_clear_400_and_the_connection_closes(
    limited_node: Process,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited_node.ports["http"])
    began = time.monotonic()
    writer.write(
        b"POST /v1/commands/acc-2/process HTTP/1.1\r\nHost: cos\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    reply = await asyncio.wait_for(_read_until_closed(reader), SLACK_S)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"did not arrive within 3s" in reply
    assert time.monotonic() - began < 3 + SLACK_S


@sqlite_only
async def test_connections_beyond_the_maximum_are_refused_and_admitted_again_when_some_close(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(
        COS_SERVER_PROTOCOL="http", COS_HTTP_MAX_CONNECTIONS="10", COS_HTTP_KEEP_ALIVE_TIMEOUT="60s"
    )
    port = node.ports["http"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as good:
        assert (await good.get(STATE_PATH)).status_code == 404  # holds connection 1 of 10
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(9)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(_read_until_closed(reader), SLACK_S)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503") and b"maximum of 10 connections" in refused
        assert (await good.get(STATE_PATH)).status_code == 404  # the kept-alive client is still served
        for _, held_writer in held:
            held_writer.close()

        async def fresh_get() -> int:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as fresh:
                try:
                    return (await fresh.get(STATE_PATH)).status_code
                except httpx.HTTPError:
                    return 0

        deadline = time.monotonic() + SLACK_S
        while await fresh_get() != 404:
            assert time.monotonic() < deadline, "closed connections never made room"
            await asyncio.sleep(0.1)


@sqlite_only
async def test_a_body_nobody_reads_still_has_to_arrive_in_time(limited_node: Process) -> None:
    """GetState answers without reading a body; a client that then never finishes sending one loses the
    connection (at the keep-alive or the body deadline, whichever comes first) instead of holding it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", limited_node.ports["http"])
    began = time.monotonic()
    writer.write(f"GET {STATE_PATH} HTTP/1.1\r\nHost: cos\r\nContent-Length: 1000\r\n\r\n{{".encode())
    reply = await asyncio.wait_for(_read_until_closed(reader), 3 + SLACK_S)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert time.monotonic() - began < KEEP_ALIVE_S + SLACK_S
