"""`python -m benchmarks.cluster_bench`: what cluster mode costs, measured side by side in one run.

Two comparisons, each with its rounds interleaved (round r of every cell before round r + 1 of any), on
one private PostgreSQL server with the benchmark's write handler:

1. The forwarding hop. Two members of one cluster; the load sends each entity either to the member that
   owns its shard ("local") or to the other one ("forwarded"), which sends it on over the peer port.
   The references are the floor harness and the floor "extended by one hop" (benchmarks/relay.py in
   front of the floor): a forwarded command should cost the node what the hop costs the floor.
2. `cos serve --workers 2` against one node, each on a database of its own so that both run at once
   and neither joins the other's cluster. The load connects to the shared port; the kernel spreads
   connections over the workers, and each worker forwards what it does not own.

Results are printed as a table and written as JSON (`--out`); docs/performance.md ("Cluster") explains
them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.engine import Engine, Round, Target, Timing
from benchmarks.processes import Fleet
from benchmarks.results import Cell
from benchmarks.stores import NUM_SHARDS, Store, postgres_database, private_postgres_server
from chiefofstate.cli.processes import Process, free_port, spawn, start_node, wait_for, workers_environment
from tests.support.postgres import fresh_database

WORKLOADS = ("ProcessCommand hot", "ProcessCommand new")
_OWNERSHIP_TIMEOUT_S = 60.0
CONNECTIONS = 16


@dataclass(frozen=True)
class Options:
    concurrency: int
    timing: Timing
    out: Path | None


def _progress(message: str) -> None:
    print(f"[cluster-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(child) for child in text]
    return found


def owners_by_shard(store: Store, members: list[Process]) -> tuple[int, ...]:
    """For each shard, the index in `members` of the member holding its lease; waits until every
    shard is held and every member holds some."""
    by_port = {process.ports["cluster"]: index for index, process in enumerate(members)}
    give_up_at = time.monotonic() + _OWNERSHIP_TIMEOUT_S
    while True:
        with psycopg.connect(store.dsn, autocommit=True) as connection:
            rows = connection.execute(
                """
                SELECT l.shard, m.address FROM cos_shard_locks l
                JOIN cos_cluster_members m ON m.member_id = l.owner
                WHERE l.expires_at > now() AND m.left_at IS NULL AND l.shard < %s
                """,
                (NUM_SHARDS,),
            ).fetchall()
        owners = {int(shard): by_port.get(int(str(address).rsplit(":", 1)[1])) for shard, address in rows}
        table = tuple(owners.get(shard) for shard in range(NUM_SHARDS))
        if None not in table and len(set(table)) == len(members):
            return tuple(int(index) for index in table if index is not None)
        if time.monotonic() > give_up_at:
            raise TimeoutError(f"shards not spread over {len(members)} members: {table}")
        time.sleep(0.2)


def _start_workers(fleet: Fleet, store: Store, handler: Process, workers: int) -> Process:
    env = workers_environment(
        {**fleet.env, **store.env},
        workers,
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(handler.ports["grpc"]),
        LOG_LEVEL="warn",
        LOG_STYLE="simple",
    )
    process = start_node(
        env, fleet.log_dir, name=f"workers-{workers}", serve_options=["--workers", str(workers)]
    )
    fleet.adopt(process)
    return process


def _start_relay(fleet: Fleet, upstream: Process) -> Process:
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.relay", "--port", str(port)]
    args += ["--upstream", f"127.0.0.1:{upstream.ports['grpc']}"]
    process = spawn("relay", args, fleet.env, fleet.log_dir)
    process.ports["grpc"] = port
    fleet.adopt(process)
    wait_for("listening", process, lambda: "listening on" in process.log_text(), 30)
    return process


def _groups(
    servers: Callable[[], list[int]], handler: Process, store: Store
) -> Callable[[], dict[str, list[int]]]:
    def groups() -> dict[str, list[int]]:
        return {"server": servers(), "handler": [handler.popen.pid], "database": store.backend_pids()}

    return groups


@dataclass(frozen=True)
class _Cell:
    target: Target
    workload: str
    shard_targets: tuple[int, ...] = ()
    spread: bool = False  # requests spread over the target's addresses by worker, not by shard


def _interleaved(engine: Engine, cells: list[_Cell], concurrency: int) -> list[Cell]:
    rounds: list[list[Round]] = [[] for _ in cells]
    for _ in range(engine.timing.rounds):
        for index, cell in enumerate(cells):
            route = "table" if cell.shard_targets else "worker" if cell.spread else "shard"
            rounds[index].append(
                engine.run_round(
                    cell.target, cell.workload, concurrency, route_by=route, shard_targets=cell.shard_targets
                )
            )
    measured = []
    for cell, done in zip(cells, rounds, strict=True):
        result = engine.combine(cell.target.system, cell.workload, concurrency, done, engine.timing)
        _progress(f"{result.system:28} {result.workload:19} {result.throughput:8,.0f} ops/s")
        measured.append(result)
    return measured


def measure_forwarding(
    engine: Engine, fleet: Fleet, store: Store, handler: Process, concurrency: int
) -> list[Cell]:
    floor = fleet.start_floor("floor", handler)
    relay = _start_relay(fleet, floor)
    members = [fleet.start_node(store.env, handler, name=f"member-{index}") for index in range(2)]
    owners = owners_by_shard(store, members)
    others = tuple(1 - owner for owner in owners)
    addresses = [f"127.0.0.1:{member.ports['grpc']}" for member in members]
    cluster_groups = _groups(lambda: [member.popen.pid for member in members], handler, store)
    cells = [
        _Cell(
            Target(
                "floor",
                [f"127.0.0.1:{floor.ports['grpc']}"],
                _groups(lambda: [floor.popen.pid], handler, store),
            ),
            "ProcessCommand",
        ),
        _Cell(
            Target(
                "floor + hop",
                [f"127.0.0.1:{relay.ports['grpc']}"],
                _groups(lambda: [floor.popen.pid, relay.popen.pid], handler, store),
            ),
            "ProcessCommand",
        ),
    ]
    for workload in WORKLOADS:
        cells.append(_Cell(Target("2 members, local", addresses, cluster_groups), workload, owners))
        cells.append(_Cell(Target("2 members, forwarded", addresses, cluster_groups), workload, others))
    try:
        return _interleaved(engine, cells, concurrency)
    finally:
        for process in [*members, relay, floor]:
            fleet.stop(process)


def measure_workers(
    engine: Engine, fleet: Fleet, stores: tuple[Store, Store], handler: Process, concurrency: int
) -> list[Cell]:
    single = fleet.start_node(stores[0].env, handler, name="one-node")
    workers = _start_workers(fleet, stores[1], handler, 2)
    single_groups = _groups(lambda: [single.popen.pid], handler, stores[0])
    workers_groups = _groups(lambda: [workers.popen.pid, *_children(workers.popen.pid)], handler, stores[1])

    # Several connections per client, as a service's clients have: the kernel spreads connections, not
    # requests, over the workers sharing the port.
    def connections(process: Process) -> list[str]:
        return [f"127.0.0.1:{process.ports['grpc']}#{k}" for k in range(CONNECTIONS)]

    cells = []
    for workload in WORKLOADS:
        cells.append(_Cell(Target("one node", connections(single), single_groups), workload, spread=True))
        cells.append(
            _Cell(Target("--workers 2", connections(workers), workers_groups), workload, spread=True)
        )
    try:
        return _interleaved(engine, cells, concurrency)
    finally:
        fleet.stop(workers)
        fleet.stop(single)


def _cpu_us(cell: Cell, group: str = "server") -> float:
    return cell.cpu.per_op_us.get(group, float("nan")) if cell.cpu else float("nan")


def _row(cell: Cell) -> str:
    return (
        f"{cell.system:24} {cell.workload:19} {cell.throughput:8,.0f} {cell.p50_ms:7.2f} "
        f"{cell.p99_ms:7.2f} {_cpu_us(cell):12,.0f} {_cpu_us(cell, 'database'):8,.0f}"
    )


def render(cells: list[Cell]) -> str:
    by = {(cell.system, cell.workload): cell for cell in cells}
    header = f"{'system':24} {'workload':19} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    lines = [header + f"{'server µs/op':>12} {'db µs/op':>8}", *(_row(cell) for cell in cells), ""]

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> str:
        if a not in by or b not in by or not by[b].throughput:
            return "n/a"
        return f"{by[a].throughput / by[b].throughput:.2f}"

    hop = ("floor + hop", "ProcessCommand")
    floor = ("floor", "ProcessCommand")
    lines.append(f"floor + hop ÷ floor: {ratio(hop, floor)}")
    for workload in WORKLOADS:
        forwarded, local = ("2 members, forwarded", workload), ("2 members, local", workload)
        workers, single = ("--workers 2", workload), ("one node", workload)
        lines.append(
            f"{workload}: forwarded ÷ floor + hop {ratio(forwarded, hop)}; "
            f"forwarded ÷ local {ratio(forwarded, local)}; --workers 2 ÷ one node {ratio(workers, single)}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _two_databases() -> Iterator[tuple[Store, Store]]:
    with (
        private_postgres_server() as server,
        fresh_database(server, f"cos_bench_a_{uuid.uuid4().hex[:8]}") as first,
        fresh_database(server, f"cos_bench_b_{uuid.uuid4().hex[:8]}") as second,
    ):
        yield postgres_database(server, first), postgres_database(server, second)


def run(options: Options) -> list[Cell]:
    log_dir = Path(tempfile.mkdtemp(prefix="cos-cluster-bench-"))
    fleet = Fleet(log_dir, {**os.environ, "PYTHONUNBUFFERED": "1"})
    engine = Engine(log_dir, fleet.generators, options.timing, 1, 1)
    try:
        with _two_databases() as stores:
            handler = fleet.start_handler()
            cells = measure_forwarding(engine, fleet, stores[0], handler, options.concurrency)
            cells += measure_workers(engine, fleet, (stores[0], stores[1]), handler, options.concurrency)
    except BaseException:
        _progress(f"the processes' logs are kept in {log_dir}")
        raise
    finally:
        fleet.stop_all()
    shutil.rmtree(log_dir, ignore_errors=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each measured window")
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured per round")
    parser.add_argument("--out", type=Path, help="write the cells as JSON here")
    args = parser.parse_args(argv)
    options = Options(args.concurrency, Timing(args.warmup, args.window, args.rounds), args.out)
    cells = run(options)
    print(render(cells))
    if options.out is not None:
        options.out.write_text(json.dumps([cell.as_json() for cell in cells], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
