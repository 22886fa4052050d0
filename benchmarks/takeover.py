"""How long taking over an upstream database takes (docs/migrating-from-upstream.md).

Makes a database at upstream's schema version 6 holding N events (one tag row each, 1,000 entities),
then runs `cos migrate` on it and reports the time of each step from the node's log, and how long the
index build that runs without blocking writes took.

    python -m benchmarks.takeover --events 1000000 [--pg-host 127.0.0.1 --pg-port 5432]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from importlib import resources

import psycopg

_STEP = re.compile(r"schema upgraded to version (\d+) in ([0-9.]+)s")
_INDEX = re.compile(r"built index (\S+) in ([0-9.]+)s")

_SEED = """
INSERT INTO event_journal (ordering, persistence_id, sequence_number, deleted, writer, write_timestamp,
    adapter_manifest, event_ser_id, event_ser_manifest, event_payload, meta_ser_id, meta_ser_manifest,
    meta_payload)
SELECT n, 'entity-' || (n %% 1000), n / 1000 + 1, false, 'upstream', 1700000000000 + n, '', 5001,
    'chief_of_state.v1.EventWrapper', decode(repeat('ab', 120), 'hex'), NULL, NULL, NULL
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS n
"""
_SEED_TAGS = """
INSERT INTO event_tag (event_id, tag)
SELECT n, 'chiefofstate' || (n %% 16) FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS n
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    arguments = parser.parse_args()
    admin = f"host={arguments.pg_host} port={arguments.pg_port} user={arguments.pg_user} dbname=postgres"
    name = f"cos_takeover_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    report: dict[str, object] = {"events": arguments.events}
    try:
        dsn = admin.replace("dbname=postgres", f"dbname={name}")
        scripts = resources.files("chiefofstate.stores").joinpath("postgres", "migrations")
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(scripts.joinpath("bootstrap.sql").read_text())
            connection.execute(scripts.joinpath("0006_initial.sql").read_text())
            connection.execute("INSERT INTO cos_migrations VALUES (6, 0, true)")
            for start in range(1, arguments.events + 1, 200_000):
                stop = min(start + 199_999, arguments.events)
                for statement in (_SEED, _SEED_TAGS):
                    connection.execute(statement, {"start": start, "stop": stop})  # type: ignore[arg-type]
            connection.execute("SELECT setval('event_journal_ordering_seq', %s)", (arguments.events,))
            connection.execute("VACUUM ANALYZE event_journal")
            connection.execute("VACUUM ANALYZE event_tag")
            size = connection.execute(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()
        report["seed_s"] = round(time.monotonic() - started, 1)
        report["database_size"] = size[0] if size else "?"
        env = {
            **os.environ,
            "COS_DB_HOST": arguments.pg_host,
            "COS_DB_PORT": str(arguments.pg_port),
            "COS_DB_USER": arguments.pg_user,
            "COS_DB_PASSWORD": "",
            "COS_DB_NAME": name,
            "LOG_LEVEL": "info",
            "LOG_STYLE": "simple",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "chiefofstate", "migrate"], env=env, capture_output=True, text=True
        )
        report["cos_migrate_s"] = round(time.monotonic() - started, 2)
        if done.returncode != 0:
            raise SystemExit(f"cos migrate failed:\n{done.stderr}")
        log = done.stdout + done.stderr
        report["steps_s"] = {f"version {v}": float(s) for v, s in _STEP.findall(log)}
        report["online_index_s"] = {index: float(s) for index, s in _INDEX.findall(log)}
    finally:
        if not arguments.keep:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
