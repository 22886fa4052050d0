"""Re-reading operator files (certificates, the client CA, bearer tokens) while the node runs.

A file is known by its signature, (inode, size, mtime) of each path: a rename over it (how most tools
rotate secrets) and an edit in place both change it. The check runs every interval in a thread, so
reading and parsing never hold the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

Signature = tuple[tuple[int, int, int], ...]


def signature(paths: tuple[Path, ...]) -> Signature:
    """Raises OSError when a path cannot be looked at."""
    stats = [path.stat() for path in paths]
    return tuple((stat.st_ino, stat.st_size, stat.st_mtime_ns) for stat in stats)


class PeriodicCheck:
    """Runs `check` in a thread every `interval_s` from start() until close()."""

    def __init__(self, check: Callable[[], object], interval_s: float, name: str) -> None:
        self._check = check
        self._interval_s = interval_s
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await asyncio.to_thread(self._check)
