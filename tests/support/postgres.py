"""A PostgreSQL server for tests: the local one when it answers, otherwise a throwaway one.

The throwaway server is started from the local PostgreSQL binaries (initdb, pg_ctl) in a temporary
folder on a free port and removed afterwards. PostgreSQL refuses to run as root, so under root it
runs as the `postgres` system user when that user exists.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"


def _answers(server: PgServer) -> bool:
    try:
        with psycopg.connect(server.dsn(), connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def postgres_binaries() -> Path:
    """The folder of the local PostgreSQL server binaries (initdb, pg_ctl)."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("no PostgreSQL binaries (initdb) found on this machine")


def _free_port() -> int:
    from chiefofstate.cli.processes import free_port

    return free_port()


class ThrowawayServer:
    """A private PostgreSQL cluster in a temporary folder; it can be stopped and started again,
    which is how tests take the database away from a running node."""

    def __init__(self) -> None:
        self.bindir = postgres_binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="cos-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.server = PgServer("127.0.0.1", _free_port(), "postgres", "")
        subprocess.run(
            [*self.run_as, str(self.bindir / "initdb"), "-D", str(self.data)]
            + ["-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.server.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options]
            + ["-l", str(self.folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 30
        while not _answers(self.server):
            if time.monotonic() > deadline:
                raise RuntimeError("throwaway PostgreSQL did not start")
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_server() -> Iterator[ThrowawayServer]:
    server = ThrowawayServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def test_server() -> Iterator[PgServer]:
    """COS_TEST_PG=local|throwaway forces a choice; by default the local server is used when it answers."""
    choice = os.environ.get("COS_TEST_PG", "auto")
    local = PgServer(
        os.environ.get("COS_TEST_PG_HOST", "127.0.0.1"),
        int(os.environ.get("COS_TEST_PG_PORT", "5432")),
        os.environ.get("COS_TEST_PG_USER", "postgres"),
        os.environ.get("COS_TEST_PG_PASSWORD", ""),
    )
    if choice == "local" or (choice == "auto" and _answers(local)):
        yield local
        return
    with throwaway_server() as throwaway:
        yield throwaway.server


@contextlib.contextmanager
def fresh_database(server: PgServer, name: str) -> Iterator[str]:
    """Create an empty database, yield its name, drop it afterwards."""
    with psycopg.connect(server.dsn(), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(server.dsn(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
