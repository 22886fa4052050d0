"""Measurements beside the main table: recovery against history length, memory per cached entity,
scale-out to two nodes, and a py-spy profile of the node under load."""

from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from benchmarks import profiling
from benchmarks.engine import ColdCursor, Engine, Target, Timing
from benchmarks.loadgen import cold_id
from benchmarks.processes import rss_bytes
from benchmarks.results import Cell
from benchmarks.stores import Store, cached_state_bytes, journal_latest_state_ms
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.launch import Process

if TYPE_CHECKING:
    from benchmarks.suite import IdRanges, NodeHandle, Plan

Progress = Callable[[str], None]
MEMORY_WARM_ENTITIES = 1_000
CACHE_FULL_ENTITIES = 30_000  # ids read once each while the cache is at capacity (and again below it)


def history_id(events: int) -> str:
    return f"history-{events}"


# -- recovery ---------------------------------------------------------------------------------------


def _get_state_ms(stub: ChiefOfStateServiceStub, entity_id: str) -> float:
    started = time.perf_counter()
    try:
        stub.GetState(pb.GetStateRequest(entity_id=entity_id), timeout=60)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
    return (time.perf_counter() - started) * 1000


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def measure_recovery(node: NodeHandle, plan: Plan, progress: Progress) -> list[dict[str, Any]]:
    """Time to the first GetState of an entity with a long and with a short history, three ways.

    * after a node restart: each restart warms the node's store connection with a read of an unknown
      entity, then reads both entities, alternating which goes first;
    * after passivation: a node with COS_ENTITY_IDLE_TIMEOUT=200ms forgets an entity between reads, so
      every read is a recovery (many samples, the same code path as after a restart);
    * the journal alone: `latest_state` timed in this process, without gRPC or the node.
    """
    lengths = (plan.history_events, plan.short_history_events)
    after_restart: dict[int, list[float]] = {length: [] for length in lengths}
    after_passivation: dict[int, list[float]] = {length: [] for length in lengths}
    for restart in range(plan.recovery_restarts):
        node.restart()
        with grpc.insecure_channel(node.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = ChiefOfStateServiceStub(channel)
            _get_state_ms(stub, f"recovery-warm-up-{restart}")
            for length in lengths if restart % 2 == 0 else lengths[::-1]:
                after_restart[length].append(_get_state_ms(stub, history_id(length)))
    node.restart(COS_ENTITY_IDLE_TIMEOUT="200ms")
    with grpc.insecure_channel(node.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = ChiefOfStateServiceStub(channel)
        _get_state_ms(stub, "recovery-warm-up")
        for sample in range(plan.recovery_samples):
            for length in lengths if sample % 2 == 0 else lengths[::-1]:
                after_passivation[length].append(_get_state_ms(stub, history_id(length)))
            time.sleep(0.4)  # idle for longer than the timeout plus one sweep: both are forgotten
    node.restart()
    in_journal = journal_latest_state_ms(node.store, [history_id(length) for length in lengths], 200)
    rows = []
    for length in lengths:
        row = {
            "store": node.store.name,
            "events": length,
            "restart_median_ms": _median_ms(after_restart[length]),
            "restart_min_ms": min(after_restart[length]),
            "restarts": len(after_restart[length]),
            "passivated_median_ms": _median_ms(after_passivation[length]),
            "passivated_p90_ms": sorted(after_passivation[length])[
                int(0.9 * (len(after_passivation[length]) - 1))
            ],
            "passivated_samples": len(after_passivation[length]),
            "journal_median_ms": in_journal[history_id(length)],
        }
        rows.append(row)
        progress(
            f"recovery {node.store.name} {length:>7,} events: "
            f"after restart {row['restart_median_ms']:.2f} ms, "
            f"after passivation {row['passivated_median_ms']:.2f} ms, "
            f"journal {row['journal_median_ms']:.3f} ms"
        )
    return rows


# -- memory -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryRanges:
    warm: tuple[int, int]
    fill: tuple[int, int]
    at_capacity: tuple[int, int]
    below_capacity: tuple[int, int]


def memory_ranges(ranges: IdRanges, entities: int, stores: tuple[str, ...]) -> MemoryRanges:
    return MemoryRanges(
        warm=ranges.take(MEMORY_WARM_ENTITIES, stores),
        fill=ranges.take(entities, stores),
        at_capacity=ranges.take(CACHE_FULL_ENTITIES, stores),
        below_capacity=ranges.take(CACHE_FULL_ENTITIES, stores),
    )


def measure_memory(
    node: NodeHandle, engine: Engine, ranges: MemoryRanges, plan: Plan, progress: Progress
) -> dict[str, Any]:
    """RSS growth of the node over `entities` cached entities, then the cost of a cache at capacity.

    The cache capacity is set to exactly warm-up + fill, so the fill leaves the cache full and every
    later read of a new entity evicts one (the node's default capacity is 100,000).
    """
    warm = ranges.warm[1] - ranges.warm[0]
    entities = ranges.fill[1] - ranges.fill[0]
    capacity = warm + entities
    node.restart(COS_ENTITY_CACHE_CAPACITY=str(capacity))
    target = node.target(f"node/{node.store.name}")
    concurrency = 64
    engine.load(target, concurrency, ranges.warm)
    time.sleep(1.0)
    pid = node.process.popen.pid
    before = rss_bytes(pid)
    started = time.monotonic()
    loaded = engine.load(target, concurrency, ranges.fill)
    took = time.monotonic() - started
    time.sleep(1.0)
    after = rss_bytes(pid)
    if loaded.errors:
        raise RuntimeError(f"loading the cache failed: {loaded.errors}")
    payload = cached_state_bytes(cold_id(ranges.fill[0]))
    per_entity = (after - before) / entities
    progress(
        f"memory: {entities:,} entities cached in {took:.1f}s, "
        f"RSS {before / 2**20:.1f} → {after / 2**20:.1f} MiB, {per_entity:.0f} B per entity"
    )
    at = engine.measure(target, "GetState cold", concurrency, cold=_cursor(ranges.at_capacity, engine))
    progress(
        f"GetState cold c={concurrency} with the cache at capacity: "
        f"{at.throughput:,.0f} ops/s p99 {at.p99_ms:.1f} ms"
    )
    node.restart(COS_ENTITY_CACHE_CAPACITY=str(capacity))
    target = node.target(f"node/{node.store.name}")  # the restarted node listens on a new port
    below = engine.measure(target, "GetState cold", concurrency, cold=_cursor(ranges.below_capacity, engine))
    progress(
        f"GetState cold c={concurrency} with an empty cache: "
        f"{below.throughput:,.0f} ops/s p99 {below.p99_ms:.1f} ms"
    )
    node.restart()
    return {
        "store": node.store.name,
        "entities": entities,
        "capacity": capacity,
        "rss_before": before,
        "rss_after": after,
        "per_entity": per_entity,
        "payload": payload,
        "overhead": per_entity - payload,
        "cache_full": {
            "concurrency": concurrency,
            "at": {"throughput": at.throughput, "p99_ms": at.p99_ms},
            "below": {"throughput": below.throughput, "p99_ms": below.p99_ms},
        },
    }


def _cursor(cold_range: tuple[int, int], engine: Engine) -> ColdCursor:
    start, end = cold_range
    return ColdCursor(start, end, (end - start) // (engine.timing.rounds + engine.quiet.retries_per_round))


# -- scale-out --------------------------------------------------------------------------------------


def measure_scaleout(node: NodeHandle, engine: Engine, plan: Plan, progress: Progress) -> list[Cell]:
    """One node against two sharing the store; the generator splits the entities between them."""
    concurrency = plan.scaleout_concurrency
    workloads = ("ProcessCommand hot", "ProcessCommand new")
    cells: list[Cell] = []
    node.restart()
    for workload in workloads:
        cell = engine.measure(node.target("1 node"), workload, concurrency)
        progress(f"scale-out 1 node {workload}: {cell.throughput:,.0f} ops/s")
        cells.append(cell)
    second = node.fleet.start_node(node.store.env, node.handler, name="node-postgres-2")
    try:
        addresses = [node.address, f"127.0.0.1:{second.ports['grpc']}"]

        def groups() -> dict[str, list[int]]:
            own = node.groups()
            return {**own, "server": own["server"] + [second.popen.pid]}

        for route_by, label in (
            ("shard", "2 nodes, split by shard"),
            ("worker", "2 nodes, split by id only"),
        ):
            target = Target(label, addresses, groups)
            for workload in workloads:
                cell = engine.measure(target, workload, concurrency, route_by=route_by)
                progress(f"scale-out {label} {workload}: {cell.throughput:,.0f} ops/s")
                cells.append(cell)
    finally:
        node.fleet.stop(second)
    return cells


# -- profile ----------------------------------------------------------------------------------------


PROFILED = (
    ("floor", "ProcessCommand"),
    ("node", "ProcessCommand hot"),
    ("node", "ProcessCommand new"),
    ("echo", "GetState"),
    ("node", "GetState cached"),
)


def profile_systems(node: NodeHandle, engine: Engine, plan: Plan, progress: Progress) -> dict[str, Any]:
    """py-spy samples the floor, the echo server and the node (PostgreSQL) at 64 in flight.

    Python and native frames of every thread are sampled, idle ones included, and the busy samples
    are scaled to the process's measured CPU per operation, so floor and node compare per command.
    """
    folder = plan.profile_dir or Path(tempfile.mkdtemp(prefix="cos-bench-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    fleet, handler = node.fleet, node.handler
    floor = fleet.start_floor("floor", handler)
    echo = fleet.start_floor("echo")
    node.restart()
    targets = {
        "floor": (
            floor,
            Target("floor", [f"127.0.0.1:{floor.ports['grpc']}"], process_groups(floor, handler)),
        ),
        "echo": (echo, Target("echo", [f"127.0.0.1:{echo.ports['grpc']}"], process_groups(echo))),
        "node": (node.process, node.target("node/postgres")),
    }
    timing = Timing(warmup_s=2.0, window_s=plan.profile_seconds, rounds=1)
    profiles: list[profiling.Profile] = []
    try:
        for system, workload in PROFILED:
            process, target = targets[system]
            raw = folder / f"{system}-{workload.replace(' ', '-').lower()}.txt"
            spy = _Spy(process.popen.pid, raw, plan.profile_seconds)
            cell = engine.measure(target, workload, 64, timing=timing, on_measure_start=spy.start)
            spy.wait()
            progress(f"profiled {system} {workload} c=64: {cell.throughput:,.0f} ops/s → {raw}")
            if raw.exists() and cell.cpu is not None:
                summary = profiling.summarise_file(raw)
                profiles.append(
                    profiling.Profile(f"{system} {workload}", summary, cell.cpu.per_op_us["server"])
                )
    finally:
        fleet.stop(floor)
        fleet.stop(echo)
    return {"folder": str(folder), "summary": profiling.render_all(profiles)}


class _Spy:
    def __init__(self, pid: int, output: Path, seconds: float) -> None:
        self.command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)]
        self.command += ["--duration", str(max(int(seconds), 1)), "--rate", "250", "--idle", "--native"]
        self.command += ["--format", "raw", "--output", str(output)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- experiments ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    node_variant: str = ""  # names from benchmarks/variants.py
    loop: str = "asyncio"  # the floor and echo run on the node's loop, always
    env: tuple[tuple[str, str], ...] = ()


VARIANTS = (
    Variant("stock"),
    Variant("uvloop", "uvloop", "uvloop"),
    Variant("gc tuned", "gc"),
    Variant("uvloop + gc tuned", "uvloop,gc", "uvloop"),
    Variant("COS_GRPC_CLIENT_POOL_SIZE=2", env=(("COS_GRPC_CLIENT_POOL_SIZE", "2"),)),
    Variant("COS_DB_POOL_MAX_SIZE=2", env=(("COS_DB_POOL_MAX_SIZE", "2"),)),
)
VARIANT_WORKLOADS = ("ProcessCommand hot", "ProcessCommand new", "GetState cached")


def process_groups(
    server: Process, handler: Process | None = None, store: Store | None = None
) -> Callable[[], dict[str, list[int]]]:
    def groups() -> dict[str, list[int]]:
        found = {"server": [server.popen.pid]}
        if handler is not None:
            found["handler"] = [handler.popen.pid]
        if store is not None:
            found["database"] = store.backend_pids()
        return found

    return groups


def measure_variants(
    node: NodeHandle, engine: Engine, progress: Progress, concurrency: int = 64
) -> list[Cell]:
    """Each variant's node against a floor and echo on the same loop, at one concurrency."""
    fleet, handler = node.fleet, node.handler
    cells: list[Cell] = []
    for variant in VARIANTS:
        floor = fleet.start_floor("floor", handler, loop=variant.loop)
        echo = fleet.start_floor("echo", loop=variant.loop)
        env = {**node.store.env, **dict(variant.env)}
        experiment = fleet.start_node(env, handler, name="node-variant", variant=variant.node_variant)
        try:
            floor_target = Target(
                f"floor [{variant.label}]",
                [f"127.0.0.1:{floor.ports['grpc']}"],
                process_groups(floor, handler),
            )
            echo_target = Target(
                f"echo [{variant.label}]", [f"127.0.0.1:{echo.ports['grpc']}"], process_groups(echo)
            )
            node_target = Target(
                f"node/{node.store.name} [{variant.label}]",
                [f"127.0.0.1:{experiment.ports['grpc']}"],
                process_groups(experiment, handler, node.store),
            )
            measured = [engine.measure(floor_target, "ProcessCommand", concurrency)]
            measured.append(engine.measure(echo_target, "GetState", concurrency))
            measured += [engine.measure(node_target, workload, concurrency) for workload in VARIANT_WORKLOADS]
        finally:
            for process in (experiment, echo, floor):
                fleet.stop(process)
        for cell in measured:
            cell.extra["variant"] = variant.label
            progress(f"variant {variant.label}: {cell.system} {cell.workload} {cell.throughput:,.0f} ops/s")
        cells += measured
    return cells
