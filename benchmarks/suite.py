"""The whole run: start the processes, seed the stores, measure every cell, stop everything."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import extras, standalone
from benchmarks.commit_probe import probe_commits, summarise_commits
from benchmarks.engine import Engine, QuietPolicy, Round, Target, Timing
from benchmarks.loadgen import cold_id
from benchmarks.processes import Fleet
from benchmarks.report import Report
from benchmarks.results import Cell
from benchmarks.stores import Store, postgres_store, seed, sqlite_store
from chiefofstate.cli.processes import Process

NODE_WORKLOADS = ("ProcessCommand new", "ProcessCommand hot", "GetState cached")
# Concurrencies of interactive services: the lone-client targets (a single-row commit budget) apply here,
# and the commit probe runs in their rounds.
LONE_LEVELS = (1, 4)


@dataclass(frozen=True)
class Plan:
    stores: tuple[str, ...]
    levels: tuple[int, ...]
    timing: Timing
    suites: frozenset[str]
    generators: int = 1
    seed: int = 1
    cold_per_level: int = 40_000
    history_events: int = 100_000
    short_history_events: int = 10
    recovery_restarts: int = 4  # even: each entity is read first after half of the restarts
    recovery_samples: int = 16
    memory_entities: int = 100_000
    scaleout_concurrency: int = 64
    profile_seconds: float = 15.0
    readside_events: int = 100_000
    lag_seconds: float = 10.0
    startup_events: int = 1_000_000
    startup_rounds: int = 5
    profile_dir: Path | None = None
    postgres_server: str = "private"  # "private": a server of our own; "local": tests/support's choice
    keep_logs: bool = False  # logs are removed after a run that succeeded, kept after one that failed
    quiet_budget_s: float = 0.0  # total seconds the run may wait for other jobs on the machine to calm down


@dataclass
class IdRanges:
    """Hands out disjoint ranges of seeded cold ids."""

    next_index: int = 0
    wanted: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def take(self, count: int, stores: tuple[str, ...]) -> tuple[int, int]:
        taken = (self.next_index, self.next_index + count)
        self.next_index += count
        for store in stores:
            self.wanted.setdefault(store, []).append(taken)
        return taken

    def ids_for(self, store: str) -> list[str]:
        return [cold_id(i) for start, end in self.wanted.get(store, []) for i in range(start, end)]


class NodeHandle:
    """A node that can be restarted; its Target resolves the current process when sampled."""

    def __init__(self, fleet: Fleet, store: Store, handler: Process, name: str) -> None:
        self.fleet = fleet
        self.store = store
        self.handler = handler
        self.name = name
        self.process = fleet.start_node(store.env, handler, name=name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.ports['grpc']}"

    def restart(self, **extra_env: str) -> None:
        """A fresh process (empty cache); `extra_env` holds until the next restart."""
        self.fleet.stop(self.process)
        self.process = self.fleet.start_node({**self.store.env, **extra_env}, self.handler, name=self.name)

    def target(self, system: str) -> Target:
        return Target(system, [self.address], self.groups)

    def groups(self) -> dict[str, list[int]]:
        return {
            "server": [self.process.popen.pid],
            "handler": [self.handler.popen.pid],
            "database": self.store.backend_pids(),
        }


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _describe(cell: Cell) -> str:
    return (
        f"{cell.system:14} {cell.workload:19} c={cell.concurrency:<3} {cell.throughput:8,.0f} ops/s  "
        f"p50 {cell.p50_ms:7.2f}  p99 {cell.p99_ms:7.2f} ms"
    )


@contextlib.contextmanager
def _stores(names: tuple[str, ...], postgres_server: str) -> Iterator[dict[str, Store]]:
    with contextlib.ExitStack() as stack:
        makers: dict[str, Callable[[], contextlib.AbstractContextManager[Store]]] = {
            "postgres": lambda: postgres_store(postgres_server),
            "sqlite": sqlite_store,
        }
        yield {name: stack.enter_context(makers[name]()) for name in names}


def run(plan: Plan) -> Report:
    report = Report()
    log_dir = Path(tempfile.mkdtemp(prefix="cos-bench-"))
    progress(f"logs in {log_dir} (removed after a good run unless --keep-logs)")
    fleet = Fleet(log_dir, {**os.environ, "PYTHONUNBUFFERED": "1"})
    quiet = QuietPolicy(budget_s=plan.quiet_budget_s)
    engine = Engine(log_dir, fleet.generators, plan.timing, plan.generators, plan.seed, quiet)
    try:
        with _stores(plan.stores, plan.postgres_server) as stores:
            _run_suites(plan, engine, fleet, stores, report)
    except BaseException:
        progress(f"the processes' logs are kept in {log_dir}")
        raise
    finally:
        fleet.stop_all()
    if plan.keep_logs:
        progress(f"the processes' logs are kept in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return report


def _run_suites(plan: Plan, engine: Engine, fleet: Fleet, stores: dict[str, Store], report: Report) -> None:
    ranges = IdRanges()
    cold = (
        {c: ranges.take(plan.cold_per_level, plan.stores) for c in plan.levels}
        if "table" in plan.suites
        else {}
    )
    memory_store = "postgres" if "postgres" in stores else plan.stores[0]
    memory_ranges = (
        extras.memory_ranges(ranges, plan.memory_entities, (memory_store,))
        if "memory" in plan.suites
        else None
    )
    recovery_warm = extras.recovery_warm_range(ranges, plan) if "recovery" in plan.suites else (0, 0)
    histories = (
        {
            extras.history_id(plan.history_events): plan.history_events,
            extras.history_id(plan.short_history_events): plan.short_history_events,
        }
        if "recovery" in plan.suites
        else {}
    )
    for name, store in stores.items():
        ids = ranges.ids_for(name)
        if ids or histories:
            progress(
                f"seeding {len(ids):,} entities and {sum(histories.values()):,} history events in {name}"
            )
            took = seed(store, ids, histories)
            progress(f"seeded {name} in {took:.1f}s")

    handler = fleet.start_handler()
    nodes = {name: NodeHandle(fleet, store, handler, f"node-{name}") for name, store in stores.items()}

    def measured(cell: Cell) -> Cell:
        progress(_describe(cell))
        return cell

    if "table" in plan.suites:
        _table(plan, engine, fleet, handler, nodes, cold, report, measured)

    if "recovery" in plan.suites:
        for node in nodes.values():
            report.recovery += extras.measure_recovery(node, plan, recovery_warm, progress)

    if "memory" in plan.suites and memory_ranges is not None:
        report.memory = extras.measure_memory(nodes[memory_store], engine, memory_ranges, plan, progress)

    if "scaleout" in plan.suites and "postgres" in nodes:
        report.scaleout = extras.measure_scaleout(nodes["postgres"], engine, plan, progress)

    if "variants" in plan.suites and "postgres" in nodes:
        report.variants = extras.measure_variants(nodes["postgres"], engine, progress)

    if "profile" in plan.suites and "postgres" in nodes:
        report.profile = extras.profile_systems(nodes["postgres"], engine, plan, progress)

    if "readside" in plan.suites:
        report.readside = standalone.measure_readside(
            plan.stores, plan.readside_events, plan.lag_seconds, progress
        )

    if "startup" in plan.suites and "postgres" in nodes:
        report.startup = standalone.measure_startup(
            plan.startup_events, plan.startup_rounds, plan.postgres_server, progress
        )


def _table(
    plan: Plan,
    engine: Engine,
    fleet: Fleet,
    handler: Process,
    nodes: dict[str, NodeHandle],
    cold: dict[int, tuple[int, int]],
    report: Report,
    measured: Callable[[Cell], Cell],
) -> None:
    floor = fleet.start_floor("floor", handler)
    echo = fleet.start_floor("echo")
    floor_target = Target(
        "floor", [f"127.0.0.1:{floor.ports['grpc']}"], extras.process_groups(floor, handler)
    )
    echo_target = Target("echo", [f"127.0.0.1:{echo.ports['grpc']}"], extras.process_groups(echo))
    order = random.Random(plan.seed)
    for concurrency in plan.levels:
        # Rounds are interleaved: round r of every system runs before round r + 1 of any, so a burst
        # of background load lands on all systems alike instead of on one cell.
        # The floor runs each ProcessCommand workload of the node: it sends what the node sends for it
        # (an empty prior state for a new entity, the last one for a hot entity).
        cells: list[tuple[Target, str]] = [
            (floor_target, "ProcessCommand new"),
            (floor_target, "ProcessCommand hot"),
            (echo_target, "GetState"),
        ]
        for name, node in nodes.items():
            cells += [(node.target(f"node/{name}"), workload) for workload in NODE_WORKLOADS]
        rounds: dict[int, list[Round]] = {index: [] for index in range(len(cells))}
        # The commit probe takes one more slot in the lone-client levels' rounds (on PostgreSQL).
        probe = nodes["postgres"].store.dsn if "postgres" in nodes and concurrency in LONE_LEVELS else ""
        probe_index = len(cells)
        slots = len(cells) + (1 if probe else 0)
        commits: list[list[float]] = []
        for _ in range(plan.timing.rounds):
            # In a new random order each round (seeded): no cell always runs right after another one's
            # load, or always first while the machine is still settling.
            for index in order.sample(range(slots), slots):
                if index == probe_index:
                    commits.append(probe_commits(probe, plan.timing.window_s))
                    continue
                target, workload = cells[index]
                rounds[index].append(engine.run_round(target, workload, concurrency))
        if commits:
            timings = summarise_commits(commits)
            report.commit_probe[concurrency] = {
                "commits": timings.commits,
                "p50_ms": timings.p50_ms,
                "p99_ms": timings.p99_ms,
            }
            progress(
                f"single-row commit (c={concurrency} rounds): p50 {timings.p50_ms:.2f}  "
                f"p99 {timings.p99_ms:.2f} ms over {timings.commits:,} commits"
            )
        for index, (target, workload) in enumerate(cells):
            cell = engine.combine(target.system, workload, concurrency, rounds[index], plan.timing)
            report.cells.append(measured(cell))
    # Is the load generator the bottleneck? Against the bare echo server at the highest concurrency,
    # one generator process must leave the server saturated, and a second must not add throughput.
    top = max(plan.levels)
    for count in (1, 2):
        cell = engine.measure(echo_target, "GetState", top, generators=count)
        cell.system = f"echo, {count} generator{'s' if count > 1 else ''}"
        report.generator_check.append(measured(cell))
    fleet.stop(floor)
    fleet.stop(echo)
    for name, node in nodes.items():
        for concurrency in plan.levels:
            node.restart()  # an empty cache, so that every read below is a recovery
            start, end = cold[concurrency]
            cursor = engine.cold_cursor(start, end)
            cell = engine.measure(node.target(f"node/{name}"), "GetState cold", concurrency, cold=cursor)
            report.cells.append(measured(cell))
