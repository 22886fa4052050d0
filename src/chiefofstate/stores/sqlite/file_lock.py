"""One node per SQLite file: an exclusive advisory lock on `<file>.lock`, held for the node's life.

SQLite would let a second node open the file and write to it; nothing would then order their appends
of one entity (D10: on SQLite a node runs alone). The lock makes the second node refuse to start. The
kernel releases it with the process, however that ends, so a killed node leaves nothing stale behind.
Readers (`cos events`, `cos state`) do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from chiefofstate.core.errors import ConfigError, StoreUnavailable


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f"pid {pid}"
    return "another process"


@contextlib.contextmanager
def exclusive_use(database: Path, purpose: str) -> Iterator[None]:
    """Hold the file's lock for the block; ConfigError naming COS_DB_PATH when a node holds it."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the SQLite lock file {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "COS_DB_PATH",
                f"{database} is in use by {_holder(fd)} (a running cos serve): one node per SQLite file, "
                f"so {purpose} is refused; stop that node or use PostgreSQL for several",
            ) from None
        # Who holds it, for the message of the next one refused; the file itself is never removed
        # (removing it would let two processes lock two different files of one name).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
