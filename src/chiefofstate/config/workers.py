"""Worker processes on one machine (docs/cluster.md, "Workers").

`COS_WORKERS` says how many node processes `cos serve` runs; with more than one it only supervises them,
and each worker is started with `COS_WORKERS=1` and its own `COS_WORKER_INDEX`. Workers are ordinary
cluster members, so they need PostgreSQL: on the SQLite file a node runs alone (decision D10).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from chiefofstate.config.parsing import Env
from chiefofstate.core.errors import ConfigError

WORKERS = "COS_WORKERS"
WORKER_INDEX = "COS_WORKER_INDEX"  # set by the supervisor for its children; not for operators
_MOST_WORKERS = 1024
_HIGHEST_PORT = 65535


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    count: int = 1  # node processes `cos serve` runs; above 1 it supervises them
    index: int | None = None  # this process's place among its supervisor's workers; None: not a worker

    @property
    def is_worker(self) -> bool:
        return self.index is not None


def _count(env: Env) -> int:
    raw = env.text(WORKERS, "").strip().lower()
    if raw == "auto":
        return max(1, os.cpu_count() or 1)
    return env.integer(WORKERS, 1, minimum=1, maximum=_MOST_WORKERS)


def load_worker_settings(env: Env, *, uses_postgres: bool) -> WorkerSettings:
    count = _count(env)
    raw_index = env.text(WORKER_INDEX, "").strip()
    index = env.integer(WORKER_INDEX, 0, minimum=0, maximum=_MOST_WORKERS - 1) if raw_index else None
    if not uses_postgres and count != 1:
        # Several writers on one SQLite file would need a coordination it does not have.
        raise ConfigError(
            WORKERS,
            f"workers run as cluster members on PostgreSQL (set COS_DB_HOST); with the SQLite file a "
            f"node runs alone, so only 1 is allowed (got {count})",
        )
    if not uses_postgres and index is not None:
        raise ConfigError(WORKER_INDEX, "workers run on PostgreSQL only (set COS_DB_HOST)")
    return WorkerSettings(count=count, index=index)


def offset_port(variable: str, port: int, offset: int) -> int:
    """A worker's own port: the configured one plus its index (0 stays 0, any free port)."""
    if port == 0:
        return 0
    if port + offset > _HIGHEST_PORT:
        raise ConfigError(
            variable, f"{port} + worker index {offset} is above {_HIGHEST_PORT}; choose a lower port"
        )
    return port + offset


def check_room_for_workers(ports: dict[str, int], count: int) -> None:
    """Refused at once in the supervisor rather than by its last workers one by one."""
    for variable, port in ports.items():
        offset_port(variable, port, count - 1)


def check_shared_ports(ports: dict[str, int]) -> None:
    """Workers find each other on a shared port only when it is fixed: 0 would give each its own."""
    for variable, port in ports.items():
        if port == 0:
            raise ConfigError(variable, "must be a fixed port when COS_WORKERS is above 1 (got 0)")
