"""How long the admin console's pages take (docs/console.md, "Page times"): a node with 16 shards and 5
read sides (80 projections) over a journal holding one entity with 10,000 events and a few hundred
others, timed from this process with one request at a time, as a browser's page load begins.

    python -m benchmarks.console_pages [--rounds 20] [--events 10000]

The journal is written straight through the journal adapter before the node starts; the bank write
handler runs so that events are decoded through its reflection, as a real console does. One read side
runs and catches up before the timing starts, the four others start paused (autoStart=false) and show
their lag. The target is under 200 ms per page; the table gives the median, the 90th percentile and the
slowest, and the node's CPU time per page (user + system, all threads), which a busy machine inflates
far less than the wall-clock figures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from benchmarks.processes import cpu_seconds
from benchmarks.readside_bench import event_wrapper, open_journal
from chiefofstate.cli.processes import (
    Process,
    node_environment,
    start_bank_read_handler,
    start_bank_write_handler,
    start_node,
)
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.gen.chiefofstate.internal.v1.readside_admin_pb2_grpc import ReadSideAdminServiceStub
from chiefofstate.ports.journal import AppendRequest

NUM_SHARDS = 16
READ_SIDES = ("rs1", "rs2", "rs3", "rs4", "rs5")
BIG_ENTITY = "big-account"
TARGET_MS = 200.0


@dataclass(frozen=True)
class PageTime:
    page: str
    median_ms: float
    p90_ms: float
    slowest_ms: float
    status: int
    cpu_ms: float


def pages(events: int) -> dict[str, str]:
    return {
        "overview": "/admin/",
        "read sides (5 x 16)": "/admin/read-sides",
        f"entity, first page of {events:,}": f"/admin/entities?id={BIG_ENTITY}",
        f"entity, last page of {events:,}": f"/admin/entities?id={BIG_ENTITY}&after={max(0, events - 50)}",
        "journal, all shards": "/admin/journal",
        "journal, one shard, late": f"/admin/journal?shard={shard_of(BIG_ENTITY, NUM_SHARDS)}&after={events}",
        "cluster": "/admin/cluster",
        "live tail page": "/admin/tail",
        "confirmation": "/admin/read-sides/confirm?action=skip&read_side=rs2",
    }


async def write_journal(path: Path, events: int, others: int) -> None:
    journal = await open_journal({"COS_DB_PATH": str(path)})
    try:
        await journal.migrate(NUM_SHARDS)
        now_ms = int(time.time() * 1000)
        for first in range(0, events, 500):
            count = min(500, events - first)
            request = AppendRequest(
                entity_id=BIG_ENTITY,
                shard=shard_of(BIG_ENTITY, NUM_SHARDS),
                expected_sequence=first,
                events=[event_wrapper(BIG_ENTITY, first + k + 1).SerializeToString() for k in range(count)],
                write_timestamp_ms=now_ms,
                writer="benchmark",
            )
            assert await journal.append_batch([request]) == [None]
        requests = [
            AppendRequest(
                entity_id=entity_id,
                shard=shard_of(entity_id, NUM_SHARDS),
                expected_sequence=0,
                events=[event_wrapper(entity_id, k + 1).SerializeToString() for k in range(5)],
                write_timestamp_ms=now_ms,
                writer="benchmark",
            )
            for entity_id in (f"account-{number:04d}" for number in range(others))
        ]
        for start in range(0, len(requests), 100):
            outcome = await journal.append_batch(requests[start : start + 100])
            assert all(result is None for result in outcome), outcome
    finally:
        await journal.close()


def time_page(port: int, pid: int, path: str, rounds: int) -> PageTime:
    samples = []
    status = 0
    cpu_started = 0.0
    for round_number in range(rounds + 1):
        if round_number == 1:
            cpu_started = cpu_seconds(pid)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        connection.request("GET", path)
        reply = connection.getresponse()
        reply.read()
        elapsed = (time.perf_counter() - started) * 1000
        connection.close()
        status = reply.status
        if round_number:  # the first round decodes each type once through reflection
            samples.append(elapsed)
    samples.sort()
    return PageTime(
        path,
        statistics.median(samples),
        samples[min(len(samples) - 1, int(len(samples) * 0.9))],
        samples[-1],
        status,
        (cpu_seconds(pid) - cpu_started) * 1000 / rounds,
    )


def wait_until_caught_up(grpc_port: int, read_side_id: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = ReadSideAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        while True:
            reply = stub.ListReadSides(admin.ListReadSidesRequest(read_side_id=read_side_id), timeout=30)
            if all(shard.lag == 0 for status in reply.read_sides for shard in status.shards):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"read side {read_side_id} did not catch up in {timeout_s:.0f}s")
            time.sleep(0.5)


def run(rounds: int, events: int, others: int) -> list[tuple[str, PageTime]]:
    with tempfile.TemporaryDirectory(prefix="console-bench-") as folder:
        directory = Path(folder)
        asyncio.run(write_journal(directory / "cos.db", events, others))
        started: list[Process] = []
        try:
            writer = start_bank_write_handler(directory / "logs")
            started.append(writer)
            reader = start_bank_read_handler(directory / "logs")
            started.append(reader)
            env = {
                "COS_DB_PATH": str(directory / "cos.db"),
                "COS_WRITE_SIDE_HOST": "127.0.0.1",
                "COS_WRITE_SIDE_PORT": str(writer.ports["write_side"]),
                "COS_READ_SIDE_ENABLED": "true",
                "COS_SUBSCRIPTION_ENABLED": "true",
                "LOG_LEVEL": "WARN",
            }
            for read_side_id in READ_SIDES:
                env[f"COS_READ_SIDE_CONFIG__HOST__{read_side_id}"] = "127.0.0.1"
                env[f"COS_READ_SIDE_CONFIG__PORT__{read_side_id}"] = str(reader.ports["read_side"])
                if read_side_id != READ_SIDES[0]:
                    env[f"COS_READ_SIDE_CONFIG__AUTO_START__{read_side_id}"] = "false"
            node = start_node(
                node_environment({**os.environ, **env}), directory / "logs", name="console-node"
            )
            started.append(node)
            wait_until_caught_up(node.ports["grpc"], READ_SIDES[0])
            port, pid = node.ports["management"], node.popen.pid
            return [(name, time_page(port, pid, path, rounds)) for name, path in pages(events).items()]
        finally:
            for process in reversed(started):
                process.stop()


def report(results: list[tuple[str, PageTime]], rounds: int) -> str:
    lines = [
        f"## Console page times ({rounds} rounds each; target < {TARGET_MS:.0f} ms)",
        "",
        "| page | status | median ms | p90 ms | slowest ms | node CPU ms/page |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(
        f"| {name} | {t.status} | {t.median_ms:.1f} | {t.p90_ms:.1f} | {t.slowest_ms:.1f} | {t.cpu_ms:.1f} |"
        for name, t in results
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--events", type=int, default=10_000, help="events of the one big entity")
    parser.add_argument("--others", type=int, default=400, help="other entities, 5 events each")
    arguments = parser.parse_args(argv)
    results = run(arguments.rounds, arguments.events, arguments.others)
    print(report(results, arguments.rounds))
    return 0 if all(timing.status == 200 for _, timing in results) else 1


if __name__ == "__main__":
    sys.exit(main())
