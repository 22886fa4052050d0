"""`cos serve --workers N`: N node processes on one machine, each a cluster member (docs/cluster.md,
"Workers"). This process only supervises them: it opens no port and no database connection.

Each worker is `python -m chiefofstate serve` with the supervisor's environment, `COS_WORKERS=1` and its
own `COS_WORKER_INDEX`. SIGTERM and SIGINT are passed on to every worker, and the supervisor exits once
all of them have stopped; a worker still running `kill_after_s` after that is killed (SIGKILL), so a stuck
worker cannot hold the supervisor, and the ports, forever. A worker that dies on its own is started again
after a back-off that doubles up to a bound; one that exits with 2, a configuration error, would fail the
same way every time, so it stops the whole supervisor with 2 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chiefofstate.config.workers import WORKER_INDEX, WORKERS

log = logging.getLogger("chiefofstate.workers")

CONFIG_ERROR_EXIT = 2  # decision D9: a bad setting exits 2, the same in a worker as in a lone node
SERVE_COMMAND = (sys.executable, "-m", "chiefofstate", "serve")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 0.5
    longest_s: float = 30.0
    # A worker that ran this long before it died is restarted after the first delay again: it was not
    # crashing in a loop.
    steady_s: float = 60.0


class Supervisor:
    def __init__(
        self,
        count: int,
        environ: Mapping[str, str],
        command: Sequence[str] = SERVE_COMMAND,
        backoff: Backoff = Backoff(),
        kill_after_s: float = 60.0,
    ) -> None:
        self._count = count
        self._environ = dict(environ)
        self._command = tuple(command)
        self._backoff = backoff
        self._kill_after_s = kill_after_s
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._exit_code = 0

    async def run(self) -> int:
        """Keep `count` workers running until a signal (0 once all stopped) or a configuration error (2)."""
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.warning("supervising %d workers", self._count)
        try:
            await asyncio.gather(*(self._keep(index) for index in range(self._count)))
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        log.warning("all %d workers stopped", self._count)
        return self._exit_code

    def _on_signal(self, signum: int) -> None:
        if not self._stopping.is_set():
            log.warning("%s: stopping %d workers", signal.Signals(signum).name, len(self._children))
        self._stop_all()

    def _stop_all(self) -> None:
        self._stopping.set()
        for child in self._children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    def _environment(self, index: int) -> dict[str, str]:
        return {**self._environ, WORKERS: "1", WORKER_INDEX: str(index)}

    async def _keep(self, index: int) -> None:
        delay = self._backoff.first_s
        while not self._stopping.is_set():
            started = time.monotonic()
            child = await asyncio.create_subprocess_exec(*self._command, env=self._environment(index))
            self._children[index] = child
            log.warning("worker %d started (pid %d)", index, child.pid)
            if self._stopping.is_set():  # the signal came while it was being started
                child.send_signal(signal.SIGTERM)
            code = await self._wait(index, child)
            del self._children[index]
            if self._stopping.is_set():
                log.warning("worker %d (pid %d) stopped (exit code %d)", index, child.pid, code)
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self._exit_code = max(self._exit_code, 1)
                return
            if code == CONFIG_ERROR_EXIT:
                log.error(
                    "worker %d (pid %d) exited with %d, a configuration error: stopping every worker",
                    index,
                    child.pid,
                    code,
                )
                self._exit_code = CONFIG_ERROR_EXIT
                self._stop_all()
                return
            if time.monotonic() - started >= self._backoff.steady_s:
                delay = self._backoff.first_s
            log.error(
                "worker %d (pid %d) exited unexpectedly (exit code %d); restarting it in %.1fs",
                index,
                child.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._backoff.longest_s)

    async def _wait(self, index: int, child: asyncio.subprocess.Process) -> int:
        """The worker's exit code; once stopping, it has `kill_after_s` to exit before it is killed."""
        exited = asyncio.ensure_future(child.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                done, _ = await asyncio.wait((exited,), timeout=self._kill_after_s)
                if not done:
                    log.error(
                        "worker %d (pid %d) still running %.0fs after SIGTERM: killing it",
                        index,
                        child.pid,
                        self._kill_after_s,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
            return await exited
        finally:
            stopping.cancel()
            exited.cancel()


def supervise(count: int, environ: Mapping[str, str], kill_after_s: float) -> int:
    return asyncio.run(Supervisor(count, environ, kill_after_s=kill_after_s).run())


def stop_with_supervisor() -> None:
    """Ask Linux to send this worker SIGTERM when its supervisor dies, even by SIGKILL, so that no
    orphaned worker keeps the shared ports; elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
