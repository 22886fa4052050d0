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
from benchmarks.engine import Engine, Round, Target, Timing
from benchmarks.loadgen import cold_id
from benchmarks.processes import rss_bytes
from benchmarks.results import Cell
from benchmarks.stores import Store, cached_state_bytes, journal_latest_state_ms
from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

if TYPE_CHECKING:
    from benchmarks.suite import IdRanges, NodeHandle, Plan

Progress = Callable[[str], None]
MEMORY_WARM_ENTITIES = 1_000
CACHE_FULL_ENTITIES = 45_000  # ids read once each while the cache is at capacity (and again below it)


RECOVERY_WARM_IDS_PER_NODE = 3


def history_id(events: int) -> str:
    return f"history-{events}"


def recovery_warm_range(ranges: IdRanges, plan: Plan) -> tuple[int, int]:
    """Seeded ids the recovery suite reads to warm each fresh node up before it times anything."""
    return ranges.take(RECOVERY_WARM_IDS_PER_NODE * (plan.recovery_restarts + 1), plan.stores)


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


def _warm_up(stub: ChiefOfStateServiceStub, warm_ids: list[str]) -> None:
    """Reads that exercise every path the timed reads take (a found entity, a missing one), so the
    timed reads pay for no first-call set-up of the node, its connections or its statements."""
    for entity_id in warm_ids:
        _get_state_ms(stub, entity_id)
    _get_state_ms(stub, f"missing-{warm_ids[0]}")


def measure_recovery(
    node: NodeHandle, plan: Plan, warm_range: tuple[int, int], progress: Progress
) -> list[dict[str, Any]]:
    """Time to the first GetState of an entity with a long and with a short history, three ways.

    * after a node restart: each restart warms the node's store connection with a read of an unknown
      entity, then reads both entities, alternating which goes first;
    * after passivation: a node with COS_ENTITY_IDLE_TIMEOUT=200ms forgets an entity between reads, so
      every read is a recovery (many samples, the same code path as after a restart);
    * the journal alone: `latest_state` timed in this process, without gRPC or the node.
    """
    lengths = (plan.history_events, plan.short_history_events)
    warm_ids = [cold_id(index) for index in range(*warm_range)]
    per_restart = len(warm_ids) // (plan.recovery_restarts + 1)
    after_restart: dict[int, list[float]] = {length: [] for length in lengths}
    after_passivation: dict[int, list[float]] = {length: [] for length in lengths}
    for restart in range(plan.recovery_restarts):
        node.restart()
        with grpc.insecure_channel(node.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = ChiefOfStateServiceStub(channel)
            _warm_up(stub, warm_ids[restart * per_restart : (restart + 1) * per_restart])
            for length in lengths if restart % 2 == 0 else lengths[::-1]:
                after_restart[length].append(_get_state_ms(stub, history_id(length)))
    node.restart(COS_ENTITY_IDLE_TIMEOUT="200ms")
    with grpc.insecure_channel(node.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = ChiefOfStateServiceStub(channel)
        _warm_up(stub, warm_ids[plan.recovery_restarts * per_restart :])
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
    at = engine.measure(target, "GetState cold", concurrency, cold=engine.cold_cursor(*ranges.at_capacity))
    progress(
        f"GetState cold c={concurrency} with the cache at capacity: "
        f"{at.throughput:,.0f} ops/s p99 {at.p99_ms:.1f} ms"
    )
    node.restart(COS_ENTITY_CACHE_CAPACITY=str(capacity))
    target = node.target(f"node/{node.store.name}")  # the restarted node listens on a new port
    below = engine.measure(
        target, "GetState cold", concurrency, cold=engine.cold_cursor(*ranges.below_capacity)
    )
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


# -- scale-out --------------------------------------------------------------------------------------


def measure_scaleout(node: NodeHandle, engine: Engine, plan: Plan, progress: Progress) -> list[Cell]:
    """One node against two sharing the store; the generator splits the entities between the two.

    Both layouts stay up together and their rounds are interleaved, as in the main table. "Split by
    shard" is what a cluster does (each node owns half the shards); "split by id only" gives each node
    half the ids whatever their shard, so both nodes lock every shard's row in cos_shard_locks.
    """
    concurrency = plan.scaleout_concurrency
    workloads = ("ProcessCommand hot", "ProcessCommand new")
    node.restart()
    second = node.fleet.start_node(node.store.env, node.handler, name="node-postgres-2")
    try:
        addresses = [node.address, f"127.0.0.1:{second.ports['grpc']}"]

        def both_nodes() -> dict[str, list[int]]:
            own = node.groups()
            return {**own, "server": own["server"] + [second.popen.pid]}

        layouts = [
            (node.target("1 node"), "shard"),
            (Target("2 nodes, split by shard", addresses, both_nodes), "shard"),
            (Target("2 nodes, split by id only", addresses, both_nodes), "worker"),
        ]
        plan_cells = [(target, route_by, workload) for workload in workloads for target, route_by in layouts]
        rounds: list[list[Round]] = [[] for _ in plan_cells]
        for _ in range(engine.timing.rounds):
            for index, (target, route_by, workload) in enumerate(plan_cells):
                rounds[index].append(engine.run_round(target, workload, concurrency, route_by=route_by))
    finally:
        node.fleet.stop(second)
    cells = []
    for (target, _, workload), measured in zip(plan_cells, rounds, strict=True):
        cell = engine.combine(target.system, workload, concurrency, measured, engine.timing)
        progress(f"scale-out {target.system} {workload}: {cell.throughput:,.0f} ops/s")
        cells.append(cell)
    return cells


# -- profile ----------------------------------------------------------------------------------------


PROFILED = (  # (system, workload, requests in flight)
    ("floor", "ProcessCommand", 64),
    ("node", "ProcessCommand hot", 64),
    ("node", "ProcessCommand new", 64),
    ("echo", "GetState", 64),
    ("node", "GetState cached", 64),
    ("floor", "ProcessCommand", 1),
    ("node", "ProcessCommand hot", 1),
)


def profile_systems(node: NodeHandle, engine: Engine, plan: Plan, progress: Progress) -> dict[str, Any]:
    """py-spy samples the floor, the echo server and the node (PostgreSQL), mostly at 64 in flight.

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
        for system, workload, concurrency in PROFILED:
            process, target = targets[system]
            label = f"{system} {workload} c={concurrency}"
            raw = folder / f"{label.replace(' ', '-').replace('=', '').lower()}.txt"
            spy = _Spy(process.popen.pid, raw, plan.profile_seconds)
            cell = engine.measure(target, workload, concurrency, timing=timing, on_measure_start=spy.start)
            spy.wait()
            progress(f"profiled {label}: {cell.throughput:,.0f} ops/s → {raw}")
            if raw.exists() and cell.cpu is not None:
                summary = profiling.summarise_file(raw, spy.expected_samples)
                profiles.append(profiling.Profile(label, summary, cell.cpu.per_op_us["server"]))
    finally:
        fleet.stop(floor)
        fleet.stop(echo)
    return {"folder": str(folder), "summary": profiling.render_all(profiles)}


class _Spy:
    """py-spy without stopping the process (see benchmarks/profiling.py for why)."""

    RATE = 200

    def __init__(self, pid: int, output: Path, seconds: float) -> None:
        self.seconds = max(int(seconds), 1)
        self.command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)]
        self.command += [
            "--duration",
            str(self.seconds),
            "--rate",
            str(self.RATE),
            "--nonblocking",
            "--threads",
        ]
        self.command += ["--format", "raw", "--output", str(output)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def expected_samples(self) -> int:
        return self.seconds * self.RATE

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
    loop: str = "uvloop"  # the floor and echo run on the node's loop, always
    env: tuple[tuple[str, str], ...] = ()


VARIANTS = (
    Variant("stock"),
    Variant("COS_EVENT_LOOP=asyncio", loop="asyncio", env=(("COS_EVENT_LOOP", "asyncio"),)),
    Variant("gc tuned", "gc"),
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
    """Every variant's node, and a floor and an echo server per event loop, all up at once; rounds are
    interleaved across all of them so that each variant meets the same background load."""
    fleet, handler, store = node.fleet, node.handler, node.store
    references: list[tuple[Target, str, str]] = []  # (target, workload, loop)
    variants: list[tuple[Target, Variant]] = []
    started: list[Process] = []
    try:
        for loop in sorted({variant.loop for variant in VARIANTS}):
            floor = fleet.start_floor("floor", handler, loop=loop)
            echo = fleet.start_floor("echo", loop=loop)
            started += [floor, echo]
            address = f"127.0.0.1:{floor.ports['grpc']}"
            references.append(
                (Target(f"floor [{loop}]", [address], process_groups(floor, handler)), "ProcessCommand", loop)
            )
            address = f"127.0.0.1:{echo.ports['grpc']}"
            references.append((Target(f"echo [{loop}]", [address], process_groups(echo)), "GetState", loop))
        for index, variant in enumerate(VARIANTS):
            env = {**store.env, **dict(variant.env)}
            process = fleet.start_node(
                env, handler, name=f"node-variant-{index}", variant=variant.node_variant
            )
            address = f"127.0.0.1:{process.ports['grpc']}"
            target = Target(
                f"node/{store.name} [{variant.label}]", [address], process_groups(process, handler, store)
            )
            variants.append((target, variant))
        plan = [
            (target, workload, {"loop": loop, "variant": f"loop: {loop}"})
            for target, workload, loop in references
        ]
        plan += [
            (target, workload, {"loop": variant.loop, "variant": variant.label})
            for target, variant in variants
            for workload in VARIANT_WORKLOADS
        ]
        rounds: list[list[Round]] = [[] for _ in plan]
        for _ in range(engine.timing.rounds):
            for index, (target, workload, _tags) in enumerate(plan):
                rounds[index].append(engine.run_round(target, workload, concurrency))
    finally:
        for process in started:
            fleet.stop(process)
    cells = []
    for (target, workload, tags), measured in zip(plan, rounds, strict=True):
        cell = engine.combine(target.system, workload, concurrency, measured, engine.timing)
        cell.extra.update(tags)
        progress(f"variant {tags['variant']}: {cell.workload} {cell.throughput:,.0f} ops/s")
        cells.append(cell)
    return cells
