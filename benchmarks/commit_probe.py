"""One durable PostgreSQL commit, timed: the part of a lone command's latency the node cannot avoid.

A command is acknowledged after its events are committed, so with one command in flight the node's
latency is at least the floor harness's (no persistence) plus one commit. The probe measures that
commit on the node's own database, in the same run: an INSERT of one small row and its COMMIT, one
after the other, on one connection (a regular table, so the commit waits for the WAL flush as the
journal's do; a temporary table would not). The suite runs it in the rounds of the lone-client
levels, interleaved with the floor's and the node's, so all three see the same machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from benchmarks.results import percentile

TABLE = "cos_bench_commit_probe"
ROW = b"x" * 64  # about an event's metadata: the row's size hardly matters next to the WAL flush


@dataclass(frozen=True)
class CommitTimings:
    commits: int
    p50_ms: float
    p99_ms: float


def probe_commits(dsn: str, seconds: float) -> list[float]:
    """Milliseconds of each INSERT + COMMIT made in `seconds`, one at a time."""
    timings: list[float] = []
    with psycopg.connect(dsn) as connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGSERIAL PRIMARY KEY, body BYTEA)")
        connection.commit()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection.execute(f"INSERT INTO {TABLE} (body) VALUES (%s)", (ROW,))
            connection.commit()
            timings.append((time.perf_counter() - started) * 1000)
        connection.execute(f"TRUNCATE {TABLE}")
        connection.commit()
    return timings


def summarise_commits(rounds: list[list[float]]) -> CommitTimings:
    """Percentiles over every commit of every round."""
    values = sorted(value for timings in rounds for value in timings)
    if not values:
        raise ValueError("the commit probe made no commit")
    return CommitTimings(len(values), percentile(values, 50.0), percentile(values, 99.0))
