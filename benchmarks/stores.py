"""The two journal stores the node runs on, and seeding them with entities the benchmark reads back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.messages import EVENT, STATE, meta_for
from chiefofstate.cli.processes import free_port
from chiefofstate.config.settings import load_settings
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper
from chiefofstate.node.node import open_store
from chiefofstate.ports.journal import AppendRequest, Journal
from tests.support.cluster import postgres_store_env
from tests.support.postgres import PgServer, postgres_binaries

NUM_SHARDS = 16  # COS_NUM_SHARDS default
SEED_BATCH = 2000


@dataclass
class Store:
    """What a node needs to reach one store (`env`), and how to find its server-side processes."""

    name: str  # "postgres" or "sqlite"
    env: dict[str, str]
    database: str = ""  # PostgreSQL database name (to find its backend processes)
    dsn: str = ""
    _backend_pids: list[int] = field(default_factory=list)

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this database (their CPU is the database's share of a command)."""
        if self.name != "postgres":
            return []
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchall()
        return [int(row[0]) for row in rows]


@contextlib.contextmanager
def private_postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL server of our own, in a temporary folder, with the stock durable settings (fsync on).

    A shared server makes a poor instrument: other jobs' CREATE/DROP DATABASE force checkpoints, and
    their fsyncs land in the middle of our commits.
    """
    try:
        bindir = postgres_binaries()
    except RuntimeError as missing:
        raise RuntimeError(f"{missing}; use --pg local") from None
    folder = Path(tempfile.mkdtemp(prefix="cos-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    server = PgServer("127.0.0.1", free_port(), "postgres", "")
    options = (
        f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on"
    )
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_store(where: str = "private") -> Iterator[Store]:
    """A fresh database on a private server (default) or on the local/test server (`where="local"`)."""
    from tests.support.postgres import fresh_database, test_server

    server_context = private_postgres_server() if where == "private" else test_server()
    with server_context as server, fresh_database(server, f"cos_bench_{uuid.uuid4().hex[:10]}") as name:
        yield postgres_database(server, name)


def postgres_database(server: PgServer, database: str) -> Store:
    """A store on `database` of `server`."""
    return Store(
        "postgres",
        postgres_store_env(server.host, server.port, server.user, server.password, database),
        database=database,
        dsn=server.dsn(database),
    )


@contextlib.contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory(prefix="cos-bench-sqlite-") as folder:
        yield Store("sqlite", {"COS_DB_PATH": str(Path(folder) / "journal.db")})


def open_store_for(store: Store) -> contextlib.AbstractContextManager[Store]:
    return postgres_store() if store.name == "postgres" else sqlite_store()


def event_payload(entity_id: str, revision: int) -> bytes:
    """The row the node writes for the benchmark handler's event: same sizes as in the measured runs."""
    return EventWrapper(
        event=EVENT, resulting_state=STATE, meta=meta_for(entity_id, revision)
    ).SerializeToString()


def cached_state_bytes(entity_id: str) -> int:
    """Size of the serialized state the node caches for one benchmark entity (the 'payload')."""
    return len(StateWrapper(state=STATE, meta=meta_for(entity_id, 1)).SerializeToString())


async def _open(store: Store) -> Journal:
    logging.getLogger("chiefofstate").setLevel(logging.ERROR)  # no start-up banner in the table's output
    settings = load_settings({**os.environ, **store.env, "LOG_LEVEL": "error"}, require_write_side=False)
    return await open_store(settings)


async def _append_all(journal: Journal, requests: Sequence[AppendRequest]) -> None:
    for start in range(0, len(requests), SEED_BATCH):
        outcomes = await journal.append_batch(requests[start : start + SEED_BATCH])
        failures = [outcome for outcome in outcomes if outcome is not None]
        if failures:
            raise RuntimeError(f"seeding failed: {failures[0]}")


async def _seed(store: Store, entity_ids: Sequence[str], histories: dict[str, int]) -> None:
    journal = await _open(store)
    try:
        now_ms = int(time.time() * 1000)
        singles = [
            AppendRequest(e, shard_of(e, NUM_SHARDS), 0, [event_payload(e, 1)], now_ms, "bench-seed")
            for e in entity_ids
        ]
        await _append_all(journal, singles)
        for entity_id, length in histories.items():
            shard = shard_of(entity_id, NUM_SHARDS)
            chunk = 5000
            for first in range(1, length + 1, chunk):
                last = min(first + chunk - 1, length)
                payloads = [event_payload(entity_id, revision) for revision in range(first, last + 1)]
                request = AppendRequest(entity_id, shard, first - 1, payloads, now_ms, "bench-seed")
                await _append_all(journal, [request])
    finally:
        await journal.close()


def seed(store: Store, entity_ids: Sequence[str], histories: dict[str, int] | None = None) -> float:
    """Write one event for each id, and `histories[id]` events for the long-lived ones; returns seconds."""
    started = time.monotonic()
    asyncio.run(_seed(store, entity_ids, histories or {}))
    return time.monotonic() - started


async def _time_latest_state(store: Store, entity_ids: Sequence[str], reads: int) -> dict[str, float]:
    journal = await _open(store)
    timings: dict[str, list[float]] = {entity_id: [] for entity_id in entity_ids}
    try:
        for read in range(reads):
            for entity_id in entity_ids if read % 2 == 0 else list(reversed(entity_ids)):
                started = time.perf_counter()
                await journal.latest_state(entity_id)
                timings[entity_id].append((time.perf_counter() - started) * 1000)
    finally:
        await journal.close()
    return {entity_id: statistics.median(values) for entity_id, values in timings.items()}


def journal_latest_state_ms(store: Store, entity_ids: Sequence[str], reads: int) -> dict[str, float]:
    """Median milliseconds of `Journal.latest_state` per entity, reads alternating between them."""
    return asyncio.run(_time_latest_state(store, entity_ids, reads))
