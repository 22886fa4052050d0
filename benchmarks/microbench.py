"""In-process measurements of the entity cache: `python -m benchmarks.microbench`.

1. The cost of one request to a new entity when the cache is at capacity (each request evicts the
   least recently used idle entity): it must not grow with the capacity.
2. The resident memory of 100,000 cached entities in an `EntityHost`, each holding the state that
   recovery builds from a stored event, measured in a fresh process; reported per entity and per
   entity minus the state's payload (the reply bytes' length).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.messages import STATE, meta_for
from benchmarks.processes import rss_bytes
from benchmarks.stores import event_payload
from chiefofstate.entities.entity import EntityState
from chiefofstate.entities.host import EntityHost, HostSettings
from chiefofstate.entities.recovery import state_from_stored
from chiefofstate.ports.journal import StoredState


def _host(capacity: int) -> EntityHost:
    settings = HostSettings(num_shards=16, cache_capacity=capacity, idle_timeout_s=0, mailbox_capacity=1000)
    return EntityHost(processor=None, settings=settings)  # type: ignore[arg-type]  # only the cache is used


def _cache(host: EntityHost, entity_id: str, state: EntityState) -> None:
    entity = host._enter(entity_id)
    entity.state = state
    host._leave(entity)


def _request_cost_us(capacity: int, requests: int = 2000) -> float:
    host = _host(capacity)
    state = EntityState.of(STATE, meta_for("x", 1))
    for index in range(capacity):
        _cache(host, f"filled-{index}", state)
    started = time.perf_counter()
    for index in range(requests):
        _cache(host, f"new-{index}", state)  # a new entity: the cache goes one over capacity
    return (time.perf_counter() - started) / requests * 1e6


def _rss_per_entity(count: int = 100_000) -> tuple[float, float]:
    ids = [f"cold-{index:08d}" for index in range(count)]
    stored = [StoredState("event", 1, event_payload(entity_id, 1)) for entity_id in ids]
    host = _host(count)
    before = rss_bytes(os.getpid())
    payload = 0
    for entity_id, row in zip(ids, stored, strict=True):
        state = state_from_stored(entity_id, row)  # as recovery does
        payload += len(state.reply)
        _cache(host, entity_id, state)
    grown = rss_bytes(os.getpid()) - before
    return grown / count, (grown - payload) / count


def main() -> None:
    if sys.argv[1:] == ["--rss"]:
        per_entity, overhead = _rss_per_entity()
        print(f"{per_entity:.0f} {overhead:.0f}")
        return
    print("| cached entities | one request at capacity |")
    print("|---|---|")
    for capacity in (10_000, 100_000):
        print(f"| {capacity:,} | {_request_cost_us(capacity):,.1f} µs |")
    print()
    measured = subprocess.run(
        [sys.executable, "-m", "benchmarks.microbench", "--rss"], capture_output=True, text=True, check=True
    )
    per_entity, overhead = measured.stdout.split()
    print("| 100,000 cached entities | RSS per entity | minus the state's bytes |")
    print("|---|---|---|")
    print(f"| EntityHost, states as recovered | {per_entity} B | {overhead} B |")


if __name__ == "__main__":
    main()
