"""Start-up time: from `cos serve` to `/ready` answering 200, on an empty and on a large PostgreSQL journal.

`python -m benchmarks.startup` makes two databases on one PostgreSQL server: one migrated and empty, one
migrated and holding `--events` events (1,000,000 by default) written with one bulk `INSERT ... SELECT`
in the node's own table layout (event_journal rows with their event_tag shard tags, as the append
function writes them). It first times the very first boot on a blank database (which runs the
migrations), then starts and stops a node on the empty and the full journal in interleaved rounds, so
that background load lands on both alike, and prints one JSON object: the median and every round in
milliseconds, and the machine's load average. A start-up that scales with the journal shows as a gap
between the two.

The clock starts just before the process is spawned and stops at the first 200 from `/ready`, polled
every few milliseconds: it includes the interpreter's own start and every import, as a user sees it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from benchmarks.messages import EVENT, STATE, meta_for
from benchmarks.processes import Fleet, cpu_seconds
from benchmarks.stores import NUM_SHARDS, Store, postgres_database, private_postgres_server
from chiefofstate.cli.processes import Process, node_environment, start_node
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from tests.support.postgres import PgServer, fresh_database, test_server

POLL_S = 0.005
READY_TIMEOUT_S = 120.0
EVENTS_PER_ENTITY = 10


def ready_ms(process: Process, started: float) -> tuple[float, float]:
    """Milliseconds from `started` to the first 200 of the node's /ready, and the node's CPU
    milliseconds by then (the figure a loaded machine changes least)."""
    url = f"http://127.0.0.1:{process.ports['management']}/ready"
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"the node exited with {process.popen.returncode}:\n{process.log_text()}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=1) as answer,
        ):
            if answer.status == 200:
                return (time.monotonic() - started) * 1000, cpu_seconds(process.popen.pid) * 1000
        time.sleep(POLL_S)
    raise TimeoutError(f"the node was not ready after {READY_TIMEOUT_S}s:\n{process.log_text()}")


def time_boot(fleet: Fleet, store: Store, handler: Process, name: str) -> tuple[float, float]:
    """One boot of `cos serve` on `store`: milliseconds to /ready and CPU milliseconds by then; the
    node is stopped afterwards."""
    env = node_environment(
        fleet.env,
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(handler.ports["grpc"]),
        LOG_LEVEL="warn",
        LOG_STYLE="simple",
        **store.env,
    )
    started = time.monotonic()
    process = start_node(env, fleet.log_dir, name=name, wait=False)
    fleet.adopt(process)
    try:
        return ready_ms(process, started)
    finally:
        fleet.stop(process)


def fill_journal(dsn: str, events: int) -> float:
    """Write `events` events (EVENTS_PER_ENTITY per entity) in one bulk statement; returns seconds."""
    started = time.monotonic()
    entities = max(1, events // EVENTS_PER_ENTITY)
    ids = [f"startup-{index:07d}" for index in range(entities)]
    payload = EventWrapper(event=EVENT, resulting_state=STATE, meta=meta_for(ids[0], 1)).SerializeToString()
    now_ms = int(time.time() * 1000)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE TEMP TABLE startup_entities (pid TEXT PRIMARY KEY, shard INTEGER)")
        with connection.cursor().copy("COPY startup_entities (pid, shard) FROM STDIN") as copy:
            for entity_id in ids:
                copy.write_row((entity_id, shard_of(entity_id, NUM_SHARDS)))
        with connection.transaction():
            # Revision by revision, as a journal grows: every entity's first event, then every second.
            connection.execute(
                """
                INSERT INTO event_journal (persistence_id, sequence_number, deleted, writer, write_timestamp,
                                           adapter_manifest, event_ser_id, event_ser_manifest, event_payload)
                SELECT e.pid, s.revision, FALSE, 'bench-startup', %s, '', 5001,
                       'chief_of_state.v1.EventWrapper', %s
                FROM generate_series(1, %s) AS s(revision) CROSS JOIN startup_entities e
                ORDER BY s.revision, e.pid
                """,
                (now_ms, payload, events // entities),
            )
            connection.execute(
                """
                INSERT INTO event_tag (event_id, tag)
                SELECT j.ordering, e.shard::TEXT
                FROM event_journal j JOIN startup_entities e ON e.pid = j.persistence_id
                """
            )
        connection.execute("VACUUM ANALYZE event_journal")
        connection.execute("VACUUM ANALYZE event_tag")
        # Written out now, not by a checkpoint in the middle of a timed boot: the bulk write leaves
        # hundreds of MB of dirty pages, whose flush would slow the boots' commits (a settled database
        # is what a node restarts on).
        connection.execute("CHECKPOINT")
    return time.monotonic() - started


def journal_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT count(*) FROM event_journal").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def server_for(where: str) -> Iterator[PgServer]:
    with private_postgres_server() if where == "private" else test_server() as server:
        yield server


def median_wall(boots: list[tuple[float, float]]) -> float:
    return statistics.median(wall for wall, _ in boots)


def summary(boots: list[tuple[float, float]]) -> dict[str, object]:
    return {
        "median_ms": round(statistics.median(wall for wall, _ in boots), 1),
        "median_cpu_ms": round(statistics.median(cpu for _, cpu in boots), 1),
        "rounds_ms": [round(wall, 1) for wall, _ in boots],
    }


def run(events: int, rounds: int, where: str) -> dict[str, object]:
    log_dir = Path(tempfile.mkdtemp(prefix="cos-bench-startup-"))
    fleet = Fleet(log_dir, {**os.environ, "PYTHONUNBUFFERED": "1"})
    suffix = uuid.uuid4().hex[:8]
    try:
        with (
            server_for(where) as server,
            fresh_database(server, f"cos_startup_empty_{suffix}") as empty_name,
            fresh_database(server, f"cos_startup_full_{suffix}") as full_name,
        ):
            empty = postgres_database(server, empty_name)
            full = postgres_database(server, full_name)
            handler = fleet.start_handler()
            first_boot = time_boot(fleet, empty, handler, "first-boot")  # runs the migrations
            time_boot(fleet, full, handler, "migrate-full")  # the schema, before the bulk write
            fill_s = fill_journal(full.dsn, events)
            written = journal_rows(full.dsn)
            empty_ms: list[tuple[float, float]] = []
            full_ms: list[tuple[float, float]] = []
            for index in range(rounds):
                # Interleaved, and alternating which goes first, so neither always follows the other.
                order = [(empty, empty_ms), (full, full_ms)]
                for store, timings in order if index % 2 == 0 else order[::-1]:
                    timings.append(time_boot(fleet, store, handler, f"boot-{index}"))
    finally:
        fleet.stop_all()
    return {
        "first_boot_ms": round(first_boot[0], 1),
        "empty": summary(empty_ms),
        "full": {**summary(full_ms), "events": written, "bulk_write_s": round(fill_s, 1)},
        "full_over_empty": round(median_wall(full_ms) / median_wall(empty_ms), 2),
        "target_ms": 1000,
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the full journal")
    parser.add_argument("--rounds", type=int, default=5, help="boots of each journal")
    parser.add_argument(
        "--pg",
        choices=("private", "local"),
        default="private",
        help="a PostgreSQL server of the benchmark's own (stock settings), or the tests' one",
    )
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.events, arguments.rounds, arguments.pg)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    cli()
