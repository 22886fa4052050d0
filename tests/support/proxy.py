"""A TCP proxy on loopback that a test can break on purpose while traffic flows through it.

One `Proxy` stands on one link (a node to PostgreSQL, a node to another node): the client connects to
`proxy.port` instead of the target. The proxy runs its own asyncio loop on a thread, so synchronous test
code drives it; every switch returns once the new mode is in force. The modes:

- `passthrough()`: bytes flow both ways as soon as they arrive.
- `blackhole(direction)`: nothing is forwarded in that direction, and nothing is dropped either. Bytes
  are held until the link is passed again, as TCP retransmits across a healed partition. While the
  client-to-target direction is held, new connections are accepted but not connected onward.
- `reset()`: every open connection is aborted with a TCP reset, and new connections are refused (the
  port stops listening) until another mode is chosen.
- `delay(seconds, direction)`: each chunk is forwarded `seconds` after it arrived, in order.

`direction` is "up" (client to target), "down" (target to client) or "both".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from chiefofstate.cli.processes import free_port

Direction = Literal["up", "down", "both"]
_DIRECTIONS: tuple[Literal["up", "down"], ...] = ("up", "down")
_CHUNK = 65536
# Generous: the loop thread competes for two busy cores with the processes under test.
_CONTROL_TIMEOUT_S = 30.0

T = TypeVar("T")


def _sides(direction: Direction) -> tuple[Literal["up", "down"], ...]:
    if direction == "both":
        return _DIRECTIONS
    if direction in _DIRECTIONS:
        return (direction,)
    raise ValueError(f"direction must be up, down or both, not {direction!r}")


@dataclass(eq=False)  # compared and hashed by identity: links live in a set
class _Link:
    """One proxied connection: the client's side, and the target's once connected."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.target) if w is not None]

    def close(self) -> None:
        for writer in self.writers():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Linger 0: closing sends RST instead of FIN, as a crashed peer or a firewall would.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class Proxy:
    """A switchable TCP proxy from 127.0.0.1:`port` to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None, name: str = "proxy"):
        self.name = name
        self.target_host = target_host
        self.target_port = target_port
        self._fixed_port = port
        self.port = 0
        self.mode = "pass"
        self.accepted = 0  # connections accepted since start, for tests and reports
        self._hold = {"up": False, "down": False}
        self._delay = {"up": 0.0, "down": 0.0}
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- control, from the test's thread ----------------------------------------------------------

    def start(self) -> Proxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()
        try:
            self._run(self._listen_first())
        except BaseException:
            self.close()
            raise
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def passthrough(self) -> None:
        self._run(self._set("pass", hold=(), delays={}))

    def blackhole(self, direction: Direction = "both") -> None:
        self._run(self._set(f"blackhole {direction}", hold=_sides(direction), delays={}))

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._run(
            self._set(
                f"delay {seconds:g}s {direction}", hold=(), delays=dict.fromkeys(_sides(direction), seconds)
            )
        )

    def reset(self) -> None:
        self._run(self._reset())

    def close(self) -> None:
        """Abort every connection, stop listening and stop the loop thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CONTROL_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CONTROL_TIMEOUT_S)
        loop.close()

    def __enter__(self) -> Proxy:
        return self.start() if self._loop is None else self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError(f"proxy {self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CONTROL_TIMEOUT_S)

    # -- on the loop thread ---------------------------------------------------------------------------

    async def _listen_first(self) -> None:
        self._changed = asyncio.Event()
        if self._fixed_port is not None:
            self.port = self._fixed_port
            await self._listen()
            return
        # A port chosen free can be taken before the bind: choose again then.
        for attempt in range(5):
            self.port = free_port()
            try:
                await self._listen()
                return
            except OSError:
                if attempt == 4:
                    raise

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True, limit=_CHUNK
        )

    async def _set(self, mode: str, *, hold: tuple[str, ...], delays: dict[str, float]) -> None:
        if self._server is None:
            # Back from reset: listen again on the same port, which clients were told about. The
            # port stays below the ephemeral range, so nothing else should have taken it meanwhile.
            for attempt in range(50):
                try:
                    await self._listen()
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
        self.mode = mode
        for side in _DIRECTIONS:
            self._hold[side] = side in hold
            self._delay[side] = delays.get(side, 0.0)
        self._wake()

    async def _reset(self) -> None:
        self.mode = "reset"
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._abort_all()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._abort_all()
        if server is not None:
            await server.wait_closed()

    async def _abort_all(self) -> None:
        links = list(self._links)
        tasks = [task for link in links for task in link.tasks if task is not asyncio.current_task()]
        for link in links:
            link.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.difference_update(links)

    def _wake(self) -> None:
        # Waiters hold the old event; setting it wakes them to look at the new mode.
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_open(self, side: Literal["up", "down"]) -> None:
        while self._hold[side]:
            assert self._changed is not None
            await self._changed.wait()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just as a reset began
            _Link(client_writer).abort()
            return
        self.accepted += 1
        link = _Link(client_writer)
        current = asyncio.current_task()
        assert current is not None
        link.tasks.add(current)
        self._links.add(link)
        try:
            # While the way to the target is held, even the connection must not reach it.
            await self._wait_open("up")
            try:
                target_reader, target_writer = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=_CHUNK
                )
            except OSError:
                link.abort()
                return
            link.target = target_writer
            await asyncio.gather(
                self._pump(client_reader, target_writer, "up", link),
                self._pump(target_reader, client_writer, "down", link),
            )
        except asyncio.CancelledError:
            # Only a reset or close cancels a link, and it waits for this task. The task ends normally:
            # asyncio's server logs an error for a connection task that ends cancelled.
            link.abort()
        finally:
            link.close()
            self._links.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        side: Literal["up", "down"],
        link: _Link,
    ) -> None:
        """Copy one direction; reading never waits for the mode, so held bytes pile up here, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    queue.put_nowait((loop.time(), data))
            except OSError:
                pass
            finally:
                queue.put_nowait(None)

        reading = asyncio.ensure_future(read())
        link.tasks.add(reading)
        try:
            while (item := await queue.get()) is not None:
                arrived, data = item
                await self._wait_open(side)
                wait = arrived + self._delay[side] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            link.tasks.discard(reading)
            # One side finished (after its last bytes went out): the connection is over for both.
            link.close()
