"""The load generator: closed-loop workers, each keeping one request in flight, timed per request.

A long-lived process (`python -m benchmarks.loadgen`) driven by the orchestrator over stdin/stdout, one
JSON object per line, so that one measurement costs no process start:

* `{"cmd": "prepare", "workload": {...}}` connects (channels are kept per address), primes the hot
  entities when asked (untimed), answers `{"ready": true}`;
* `{"cmd": "go", "t0": T0}` runs: warm-up until T0 + warmup_s, then `windows` consecutive windows of
  window_s seconds (a request belongs to the window in which it completed), and answers with the
  counts and latencies. T0 is a `time.monotonic()` instant: CLOCK_MONOTONIC is shared by every process
  of the machine, so several generators measure the same windows.

End of input stops it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from grpc import aio

from benchmarks.messages import COMMAND
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.node.gc_tuning import freeze_start_up_heap

if TYPE_CHECKING:
    from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceAsyncStub

RPCS = ("process", "get")
ENTITY_KINDS = ("new", "hot", "cold")
ROUTES = ("shard", "worker", "table")


@dataclass(frozen=True)
class Workload:
    """What one generator process does; built by the orchestrator, passed as JSON."""

    targets: list[str]  # HOST:PORT[#k]; with several, `route_by` picks one per request
    rpc: str  # "process" (ProcessCommand) or "get" (GetState)
    entities: str  # "new": a fresh id per request; "hot": a few ids per worker; "cold": seeded ids, once each
    prefix: str  # makes the ids of one measurement unique
    workers: int  # concurrency of this process
    first_worker: int  # global index of its first worker (ids never overlap between generators)
    total_workers: int  # across every generator of the measurement
    warmup_s: float
    window_s: float
    windows: int
    prime: bool = False  # create the hot entities first (untimed), so they are cached when timing starts
    hot_per_worker: int = 4
    cold_start: int = 0  # cold ids are cold_id(i) for cold_start <= i < cold_end, each read once
    cold_end: int = 0
    num_shards: int = 16
    timeout_s: float = 30.0
    seed: int = 1
    # "shard": an entity goes to targets[shard % len(targets)], as a cluster that splits shards would;
    # "worker": worker w sends everything to targets[w % len(targets)] (ids split with no regard to shards);
    # "table": an entity goes to targets[shard_targets[shard]] (a cluster's owners, or their opposite).
    route_by: str = "shard"
    shard_targets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.rpc not in RPCS or self.entities not in ENTITY_KINDS or self.route_by not in ROUTES:
            raise ValueError(f"unknown rpc, entity kind or route in {self!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cold_id(index: int) -> str:
    """The ids of the entities seeded in the store for the cold GetState measurements."""
    return f"cold-{index:08d}"


@dataclass
class Window:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_us: list[float] = field(default_factory=list)


class Channels:
    """One channel per address, kept between measurements; channels to other addresses are closed."""

    def __init__(self) -> None:
        self._open: dict[str, aio.Channel] = {}

    async def stubs(self, addresses: list[str]) -> list[ChiefOfStateServiceAsyncStub]:
        for address in [known for known in self._open if known not in addresses]:
            await self._open.pop(address).close()
        for address in addresses:
            if address not in self._open:
                # "HOST:PORT#k": a connection of its own (k = 0, 1, ...) to HOST:PORT. gRPC shares one
                # connection among channels with equal arguments; a server with several processes on
                # one port (SO_REUSEPORT) only sees its load spread when clients open several.
                target, _, salt = address.partition("#")
                options = [("benchmarks.connection", int(salt))] if salt else []
                channel = aio.insecure_channel(target, options=options)
                await asyncio.wait_for(channel.channel_ready(), 30)
                self._open[address] = channel
        return [ChiefOfStateServiceStub(self._open[address]) for address in addresses]

    async def close(self) -> None:
        for channel in self._open.values():
            await channel.close()
        self._open.clear()


class Measurement:
    def __init__(self, workload: Workload, stubs: list[ChiefOfStateServiceAsyncStub]) -> None:
        self.workload = workload
        self._stubs = stubs
        self.windows = [Window() for _ in range(workload.windows)]
        self.exhausted = False

    def _stub_for(self, worker: int, entity_id: str) -> ChiefOfStateServiceAsyncStub:
        if len(self._stubs) == 1:
            return self._stubs[0]
        if self.workload.route_by == "worker":
            return self._stubs[worker % len(self._stubs)]
        if self.workload.route_by == "table":
            return self._stubs[self.workload.shard_targets[shard_of(entity_id, self.workload.num_shards)]]
        return self._stubs[shard_of(entity_id, self.workload.num_shards) % len(self._stubs)]

    def hot_ids(self, worker: int) -> list[str]:
        return [f"{self.workload.prefix}-h{worker}-{k}" for k in range(self.workload.hot_per_worker)]

    def entity_ids(self, worker: int) -> Iterator[str]:
        """The ids one worker uses, in order; deterministic for a given seed."""
        w = self.workload
        if w.entities == "new":
            return (f"{w.prefix}-n{worker}-{n}" for n in itertools.count())
        if w.entities == "cold":
            return (cold_id(i) for i in range(w.cold_start + worker, w.cold_end, w.total_workers))
        rng = random.Random(w.seed * 1_000_003 + worker)
        hot = self.hot_ids(worker)
        return (rng.choice(hot) for _ in itertools.count())

    def call(self, worker: int, entity_id: str) -> Awaitable[Any]:
        stub = self._stub_for(worker, entity_id)
        timeout = self.workload.timeout_s
        if self.workload.rpc == "process":
            return stub.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity_id, command=COMMAND), timeout=timeout
            )
        return stub.GetState(pb.GetStateRequest(entity_id=entity_id), timeout=timeout)

    async def prime(self) -> None:
        """Hot entities exist and are cached before the clock starts (one command each, untimed)."""
        w = self.workload
        if w.entities != "hot" or not w.prime:
            return

        async def prime_worker(worker: int) -> None:
            for entity_id in self.hot_ids(worker):
                request = pb.ProcessCommandRequest(entity_id=entity_id, command=COMMAND)
                await self._stub_for(worker, entity_id).ProcessCommand(request, timeout=w.timeout_s)

        workers = range(w.first_worker, w.first_worker + w.workers)
        await asyncio.gather(*(prime_worker(worker) for worker in workers))

    async def run(self, started_at: float) -> None:
        w = self.workload
        measure_from = started_at + w.warmup_s
        stop_at = measure_from + w.window_s * w.windows
        workers = range(w.first_worker, w.first_worker + w.workers)
        await asyncio.gather(*(self._worker(worker, measure_from, stop_at) for worker in workers))

    async def _worker(self, worker: int, measure_from: float, stop_at: float) -> None:
        clock = time.monotonic
        window_s = self.workload.window_s
        call: Callable[[int, str], Awaitable[Any]] = self.call
        ids = self.entity_ids(worker)
        while clock() < stop_at:
            entity_id = next(ids, None)
            if entity_id is None:
                self.exhausted = True
                return
            began = clock()
            failure = None
            try:
                await call(worker, entity_id)
            except aio.AioRpcError as error:
                failure = error.code().name
            ended = clock()
            index = int((ended - measure_from) // window_s)
            if 0 <= index < len(self.windows):
                window = self.windows[index]
                if failure is None:
                    window.ok += 1
                    window.latencies_us.append((ended - began) * 1e6)
                else:
                    window.errors[failure] += 1

    def results(self) -> dict[str, Any]:
        return {
            "exhausted": self.exhausted,
            "windows": [
                {"ok": window.ok, "errors": dict(window.errors), "latencies_us": window.latencies_us}
                for window in self.windows
            ],
        }


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    channels = Channels()
    measurement: Measurement | None = None
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            message = json.loads(line)
            if message["cmd"] == "prepare":
                fields = message["workload"]
                workload = Workload(**{**fields, "shard_targets": tuple(fields.get("shard_targets", ()))})
                measurement = Measurement(workload, await channels.stubs(workload.targets))
                await measurement.prime()
                _reply({"ready": True})
            elif message["cmd"] == "go" and measurement is not None:
                await measurement.run(float(message["t0"]))
                _reply(measurement.results())
                measurement = None
            else:
                raise SystemExit(f"unexpected message {message!r}")
    finally:
        await channels.close()


def main() -> None:
    freeze_start_up_heap()  # as every process of the benchmark does (benchmarks/handlers.py)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
