"""Shared pieces of the HTTP and subscription benchmarks: real processes, a closed-loop load, statistics.

Every run starts its own bank write handler and `cos serve` node (SQLite in a temporary directory, or
PostgreSQL when COS_DB_HOST is set in the environment) and stops them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chiefofstate.cli.processes import (
    Process,
    free_port,
    node_environment,
    spawn,
    start_bank_write_handler,
    start_node,
    wait_for,
)

Call = Callable[[int], Awaitable[object]]  # one request made by worker number N


@dataclass
class LoadResult:
    name: str
    calls: int
    failures: int
    seconds: float
    latencies_s: list[float] = field(repr=False)

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"| {self.name} | {self.throughput:,.0f} | {self.percentile_ms(0.50):.2f} | "
            f"{self.percentile_ms(0.99):.2f} | {self.calls} | {self.failures} |"
        )


TABLE_HEADER = (
    "| workload | calls/s | p50 ms | p99 ms | calls | failures |\n| --- | ---: | ---: | ---: | ---: | ---: |"
)


async def closed_loop(name: str, call: Call, concurrency: int, duration_s: float) -> LoadResult:
    """`concurrency` workers each issue one request after the other until the time is up."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration_s

    async def worker(index: int) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(index)
            except Exception:  # a failed call is counted, not fatal: the benchmark reports it
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return LoadResult(name, len(latencies), failures, time.perf_counter() - started, latencies)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def bank_and_node(**node_overrides: str) -> Iterator[tuple[Process, Process]]:
    """A gRPC bank handler and a node serving gRPC and HTTP; both stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="cos-bench-") as scratch:
        logs = Path(scratch) / "logs"
        handler = start_bank_write_handler(logs)
        node: Process | None = None
        try:
            env = {key: value for key, value in os.environ.items() if not key.startswith(("COS_", "LOG_"))}
            env.update(
                COS_WRITE_SIDE_HOST="127.0.0.1",
                COS_WRITE_SIDE_PORT=str(handler.ports["grpc"]),
                COS_SERVER_PROTOCOL="both",
                COS_DB_PATH=str(Path(scratch) / "cos.db"),
                LOG_LEVEL="WARN",
            )
            for key in ("COS_DB_HOST", "COS_DB_PORT", "COS_DB_USER", "COS_DB_PASSWORD", "COS_DB_NAME"):
                if key in os.environ:
                    env[key] = os.environ[key]
            node = start_node(node_environment(env, **node_overrides), logs, name="bench-node")
            yield handler, node
        finally:
            if node is not None:
                node.stop()
            handler.stop()


class _ReplyReader(asyncio.Protocol):
    """Collects one Content-Length framed reply at a time into the waiting request's future."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))


class KeepAliveConnection:
    """A minimal HTTP/1.1 client on one keep-alive connection, for load generation only.

    httpx spends milliseconds of CPU per request (encode/httpx#3215), and even asyncio's streams cost
    a few times what the node's cached GetState does; on a shared 2-core machine that would measure the
    client rather than the node. This sends one request at a time on an asyncio protocol and reads a
    Content-Length framed reply, which is all the CoS HTTP API produces. Its headroom is measured in
    every run (benchmarks.trivial_http_server).
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: _ReplyReader | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", timeout_s: float = 10.0
    ) -> tuple[int, bytes]:
        """One request; any failure drops the connection (the server also closes idle ones after
        5 s), so the next request starts on a fresh one."""
        loop = asyncio.get_running_loop()
        try:
            reader = self._reader
            if reader is None or reader.transport is None or reader.transport.is_closing():
                _, reader = await loop.create_connection(_ReplyReader, self._host, self._port)
                self._reader = reader
            head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            reader.waiter = waiter = loop.create_future()
            assert reader.transport is not None
            reader.transport.write(head.encode() + b"\r\n" + body)
            timer = loop.call_later(timeout_s, waiter.cancel)
            try:
                return await waiter
            finally:
                timer.cancel()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader.transport is not None:
            reader.transport.close()


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (a server in start-up is ready once it does)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def trivial_http_server(log_dir: Path) -> Iterator[Process]:
    """benchmarks.trivial_http_server in its own process; its port is `ports["http"]`."""
    port = free_port()
    server = spawn(
        "trivial-http-server",
        [sys.executable, "-m", "benchmarks.trivial_http_server", "--port", str(port)],
        os.environ,
        log_dir,
    )
    server.ports["http"] = port
    try:
        wait_for("listening", server, lambda: accepts(port), 30)
        yield server
    finally:
        server.stop()


HEADROOM_NEEDED = 3.0  # the client's rate against a trivial server, over the node's rate it measures


@dataclass
class Headroom:
    """How much faster the HTTP client runs against a server that does nothing than against the node:
    below HEADROOM_NEEDED, the client would be part of what is measured and the HTTP figures are void."""

    client_rate: float  # calls/s against the trivial server, same client, same concurrency
    node_rate: float  # the fastest HTTP workload's calls/s against the node

    @property
    def ratio(self) -> float:
        return self.client_rate / self.node_rate if self.node_rate else float("inf")

    @property
    def valid(self) -> bool:
        return self.ratio >= HEADROOM_NEEDED

    def line(self) -> str:
        verdict = (
            "valid" if self.valid else f"INVALID: the client is the bottleneck (< {HEADROOM_NEEDED:g} x)"
        )
        return (
            f"client headroom: {self.client_rate:,.0f} calls/s against a trivial HTTP server, "
            f"{self.ratio:.1f} x the node's fastest HTTP rate ({self.node_rate:,.0f}): {verdict}"
        )
