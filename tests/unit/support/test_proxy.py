"""The fault proxy's modes, against an echo server that records what reached it."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.proxy import Proxy

# How long "nothing arrives" is watched for: long enough to mean something, short for the suite.
QUIET_S = 0.3
# How long something that must arrive may take on a busy machine.
PATIENCE_S = 20.0


class _Echo(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        while data := self.request.recv(4096):
            with self.server.lock:
                self.server.received += data
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.connections = 0
        self.received = b""

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[Proxy]:
    with Proxy("127.0.0.1", echo.port, name="test") as running:
        yield running


def connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=PATIENCE_S)


def receive(sock: socket.socket, size: int, timeout_s: float = PATIENCE_S) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(QUIET_S)
    try:
        return sock.recv(1) == b"x"  # never true: either it times out or something came
    except TimeoutError:
        return True


def eventually(predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def round_trip_s(proxy: Proxy, payload: bytes = b"ping") -> float:
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        assert receive(sock, len(payload)) == payload
        return time.monotonic() - started


def test_passes_bytes_both_ways(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert receive(sock, 5) == b"hello"
        big = bytes(range(256)) * 1024  # several chunks
        sock.sendall(big)
        assert receive(sock, len(big)) == big
    assert proxy.accepted == 1


def test_blackhole_both_ways_holds_new_connections_and_releases_them_in_order(
    proxy: Proxy, echo: EchoServer
) -> None:
    proxy.blackhole()
    with connect(proxy) as sock:  # accepted, but not connected onward
        sock.sendall(b"one ")
        sock.sendall(b"two")
        assert nothing_arrives(sock)
        assert echo.connections == 0 and echo.received == b""
        proxy.passthrough()
        assert receive(sock, 7) == b"one two"


def test_blackhole_of_an_open_connection_holds_its_bytes(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert receive(sock, 1) == b"a"
        proxy.blackhole("both")
        sock.sendall(b"b")
        assert nothing_arrives(sock)
        assert echo.received == b"a"
        proxy.passthrough()
        assert receive(sock, 1) == b"b"


def test_blackhole_up_keeps_bytes_from_the_target(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert receive(sock, 1) == b"a"
        proxy.blackhole("up")
        sock.sendall(b"b")
        assert nothing_arrives(sock)
        assert echo.received == b"a"
        proxy.passthrough()
        assert receive(sock, 1) == b"b"


def test_blackhole_down_lets_bytes_reach_the_target_but_not_the_answers(
    proxy: Proxy, echo: EchoServer
) -> None:
    proxy.blackhole("down")
    with connect(proxy) as sock:
        sock.sendall(b"hi")
        assert eventually(lambda: echo.received == b"hi")
        assert nothing_arrives(sock)
        proxy.passthrough()
        assert receive(sock, 2) == b"hi"


def test_reset_aborts_open_connections_and_refuses_new_ones_until_passed_again(
    proxy: Proxy, echo: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert receive(sock, 1) == b"a"
        proxy.reset()
        sock.settimeout(PATIENCE_S)
        with pytest.raises(ConnectionResetError):
            # A reset connection fails on the next read (or on the write, if the RST came first).
            sock.sendall(b"b")
            sock.recv(1)
    assert proxy.open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        connect(proxy).close()
    proxy.passthrough()
    with connect(proxy) as sock:
        sock.sendall(b"c")
        assert receive(sock, 1) == b"c"
    # the aborted connections end quietly: asyncio logs nothing for them
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("direction", ["up", "down", "both"])
def test_delay_holds_each_chunk_for_the_time_asked(proxy: Proxy, direction: str) -> None:
    proxy.delay(0.4, direction)  # type: ignore[arg-type]
    one_way = 0.4 if direction != "both" else 0.8
    assert round_trip_s(proxy) >= one_way - 0.01  # the loop's clock may round a hair down
    proxy.passthrough()
    # Nothing held any more: far faster than the delay even on a busy machine.
    assert min(round_trip_s(proxy) for _ in range(3)) < one_way


def test_a_refused_target_closes_the_client(echo: EchoServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # bound but never listening: connecting is refused
        # EOF or reset (on loopback the reset can even beat connect() back): either way, closed
        with (
            Proxy("127.0.0.1", dead_port, name="dead") as proxy,
            contextlib.suppress(ConnectionResetError),
            connect(proxy) as sock,
        ):
            sock.settimeout(PATIENCE_S)
            assert sock.recv(1) == b""


def test_close_stops_listening_and_can_be_repeated(echo: EchoServer) -> None:
    proxy = Proxy("127.0.0.1", echo.port, name="closing").start()
    port = proxy.port
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert receive(sock, 1) == b"a"
        proxy.close()
        proxy.close()
        sock.settimeout(PATIENCE_S)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(RuntimeError):
        proxy.passthrough()
