"""In-process measurements behind two of docs/performance.md's proposals: `python -m benchmarks.microbench`.

1. The cost of one request when the entity cache is at capacity, with `EntityHost`'s eviction as it is
   and with the proposed one that stops after the first `excess` idle entities (least recently used).
2. The resident memory of 100,000 cached states held as protobuf messages (as the node holds them)
   and as serialized bytes (the proposal), each measured in a fresh process.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.messages import STATE, meta_for
from benchmarks.processes import rss_bytes
from benchmarks.stores import event_payload
from chiefofstate.entities.host import EntityHost, HostSettings
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper


def evict_first_idle(host: EntityHost) -> None:
    """The proposal: walk from the least recently used end and stop once `excess` idle ones are found."""
    excess = len(host._entities) - host._settings.cache_capacity
    if excess <= 0:
        return
    victims = list(itertools.islice((e for e in host._entities.values() if e.idle), excess))
    for entity in victims:
        host._forget(entity)
    host.passivations += len(victims)


def _request_cost_us(capacity: int, proposed: bool, requests: int = 2000) -> float:
    settings = HostSettings(num_shards=16, cache_capacity=capacity, idle_timeout_s=0, mailbox_capacity=1000)
    host = EntityHost(processor=None, settings=settings)  # type: ignore[arg-type]  # only the cache is used
    if proposed:
        host._evict_over_capacity = lambda: evict_first_idle(host)  # type: ignore[method-assign]
    state = StateWrapper(state=STATE, meta=meta_for("x", 1))
    for index in range(capacity):
        entity = host._enter(f"filled-{index}")
        entity.state = state
        host._leave(entity)
    started = time.perf_counter()
    for index in range(requests):
        entity = host._enter(f"new-{index}")  # a new entity: the cache goes one over capacity
        entity.state = state
        host._leave(entity)
    return (time.perf_counter() - started) / requests * 1e6


def _rss_per_state(kind: str, count: int = 100_000) -> float:
    ids = [f"cold-{index:08d}" for index in range(count)]
    payloads = [event_payload(entity_id, 1) for entity_id in ids]
    before = rss_bytes(os.getpid())
    kept: dict[str, Any] = {}
    for entity_id, payload in zip(ids, payloads, strict=True):
        event = EventWrapper.FromString(payload)
        state = StateWrapper(state=event.resulting_state, meta=event.meta)  # as entities/recovery.py does
        kept[entity_id] = state if kind == "message" else state.SerializeToString()
    return (rss_bytes(os.getpid()) - before) / count


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--rss":
        print(f"{_rss_per_state(sys.argv[2]):.0f}")
        return
    print("| cached entities | one request at capacity, now | with the proposed eviction |")
    print("|---|---|---|")
    for capacity in (10_000, 100_000):
        now = _request_cost_us(capacity, proposed=False, requests=500)
        proposed = _request_cost_us(capacity, proposed=True)
        print(f"| {capacity:,} | {now:,.0f} µs | {proposed:,.1f} µs |")
    print()
    print("| 100,000 cached states held as | RSS per entity (includes the dict entry) |")
    print("|---|---|")
    for kind, label in (("message", "StateWrapper messages (now)"), ("bytes", "serialized bytes (proposed)")):
        measured = subprocess.run(
            [sys.executable, "-m", "benchmarks.microbench", "--rss", kind],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"| {label} | {measured.stdout.strip()} B |")


if __name__ == "__main__":
    main()
