"""Partitions between members, made without touching the machine's network: every member's peer port is
reached through a proxy of its own (tests/support/proxy.py), and its database link through another, so
a test can cut, hold, reset or slow everything the other members send to one member, one way or both,
and isolate a member entirely (its peers and its database).

What a user must see (docs/cluster.md, "Partitions"):
- a member whose peer link is cut keeps its shards (it still renews its leases in the database) and
  serves the callers that reach it directly; requests forwarded to it fail with UNAVAILABLE or their
  deadline while the link is cut, and nothing is ever written twice or lost;
- a member cut off from the database as well loses its leases by its own clock; the others take its
  shards over, and once the links heal it is a member again and takes its share back;
- once every link heals, every member serves every entity again, forwarded or not.
The history checker judges every call against the journal; the test adds that every member served
commands after the partitions healed.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster.scenarios import (
    FAST_TIMING,
    SHARDS,
    Settings,
    shards_by_address,
    start_load,
    wait_for_takeover,
)
from tests.faults.scenarios import Outcome, store
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env
from tests.support.history import History, check
from tests.support.journal_reader import read_journal
from tests.support.postgres import PgServer
from tests.support.proxy import Proxy

# How long after every link healed the members are given before the final load must be served whole:
# a few lease-renewal and round intervals, and gRPC's reconnection to a peer it saw fail.
_SETTLE_S = 4.0
_AFTER_LOAD_S = 4.0
# Failures of the service, not of the command: the bank refusing an account opened twice
# (ALREADY_EXISTS) or an overdraft is an answer.
_SERVICE_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN"})


def _cut_peers_both_ways(node: Node) -> None:
    _peer_proxy(node).blackhole("both")


def _hold_requests_to(node: Node) -> None:
    _peer_proxy(node).blackhole("up")


def _hold_replies_from(node: Node) -> None:
    _peer_proxy(node).blackhole("down")


def _reset_peer_connections(node: Node) -> None:
    _peer_proxy(node).reset()


def _slow_peer_link(node: Node) -> None:
    _peer_proxy(node).delay(0.25, "both")


def _peer_proxy(node: Node) -> Proxy:
    if node.peer_proxy is None:
        raise ValueError(f"{node.name} has no peer proxy")
    return node.peer_proxy


# Each partition: what it does to one member's links, and how long it lasts (seconds, drawn).
PARTITIONS: dict[str, tuple[Callable[[Node], None], tuple[float, float]]] = {
    "peer link cut both ways": (_cut_peers_both_ways, (2.0, 4.0)),
    "requests to the member held": (_hold_requests_to, (2.0, 4.0)),
    "replies from the member held": (_hold_replies_from, (2.0, 4.0)),
    "peer connections reset and refused": (_reset_peer_connections, (2.0, 4.0)),
    "peer link slowed by 250 ms each way": (_slow_peer_link, (2.0, 4.0)),
}
ISOLATION = "member isolated from peers and database past its leases"


def _heal(node: Node) -> None:
    for proxy in (node.peer_proxy, node.proxy):
        if proxy is not None:
            proxy.passthrough()


def _isolate(node: Node) -> None:
    _peer_proxy(node).blackhole("both")
    if node.proxy is None:
        raise ValueError(f"{node.name} has no database proxy")
    node.proxy.blackhole("both")


def _sleep(seconds: float) -> None:
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def peer_partitions(
    seed: int, workdir: Path, pg: PgServer | None = None, settings: Settings | None = None
) -> Outcome:
    """Three members under load through every member; each partition of PARTITIONS and an isolation, in
    the seed's order and on members the seed draws, each healed before the next; then a load that every
    member must serve whole, and the verdict."""
    settings = settings or Settings()
    rng = random.Random(f"peer-partitions/{seed}")
    logs = workdir / "logs"
    faults: list[tuple[float, str]] = []
    problems: list[str] = []
    takeovers: list[float] = []
    prefix = f"p{seed}"

    def note(what: str) -> float:
        now = time.monotonic()
        faults.append((now, what))
        return now

    episodes = [*PARTITIONS, ISOLATION]
    rng.shuffle(episodes)
    with contextlib.ExitStack() as stack:
        handler = stack.enter_context(BankHandler(logs))
        store_env = stack.enter_context(store("postgres", workdir, pg))
        timing = FAST_TIMING if settings.fast_timing else {}
        base = node_base_env(handler.port, os.environ, COS_NUM_SHARDS=str(SHARDS), **timing)
        cluster = stack.enter_context(Cluster(base, store_env, logs, proxied=True))
        members = [cluster.add_node(peer_proxied=True) for _ in range(3)]
        longest = sum(high for _, (_, (_, high)) in PARTITIONS.items())
        duration_s = longest + len(episodes) * sum(settings.gap_s) / 2 + 4 * settings.lease_ttl_s + 20
        main = start_load(settings, members, workdir, "main", seed=seed, duration_s=duration_s, prefix=prefix)
        stack.callback(main.stop)
        for episode in episodes:
            _sleep(rng.uniform(*settings.gap_s))
            victim = rng.choice(members)
            if episode == ISOLATION:
                at = note(f"{victim.name}: {episode}")
                _isolate(victim)
                address = f"127.0.0.1:{_peer_proxy(victim).port}"
                takeovers.append(wait_for_takeover(store_env, {address}, at, settings.lease_ttl_s * 4 + 20))
                note("its shards taken over")
                _heal(victim)
                note(f"{victim.name} healed")
                _wait_for_share(store_env, victim, settings.lease_ttl_s * 4 + 20, problems)
                continue
            act, (low, high) = PARTITIONS[episode]
            note(f"{victim.name}: {episode}")
            act(victim)
            _sleep(rng.uniform(low, high))
            _heal(victim)
            note(f"{victim.name} healed")
        main.stop()
        history = main.wait()
        _sleep(_SETTLE_S)
        after = start_load(
            settings,
            members,
            workdir,
            "after",
            seed=seed + 1_000_000,
            duration_s=_AFTER_LOAD_S,
            prefix=prefix,
        )
        stack.callback(after.stop)
        after_history = after.wait()
        journal = read_journal(store_env, prefix=prefix)
        result = check(
            History.merge(history, after_history),
            journal,
            run=f"peer partitions seed {seed}",
            takeover_seconds=takeovers,
        )
        _expect_whole_service(after_history, members, problems)
        return Outcome(result, problems, faults, workdir)


def _wait_for_share(store_env: dict[str, str], node: Node, limit_s: float, problems: list[str]) -> None:
    """A member back from isolation must become a member again and take shards back."""
    address = f"127.0.0.1:{_peer_proxy(node).port}"
    give_up_at = time.monotonic() + limit_s
    while shards_by_address(store_env).get(address, 0) == 0:
        if time.monotonic() > give_up_at:
            problems.append(f"{node.name} took no shard back within {limit_s:.0f}s of healing")
            return
        time.sleep(0.1)


def _expect_whole_service(after: History, members: list[Node], problems: list[str]) -> None:
    """Once healed, every member serves every entity: every call of the final load succeeds, and each
    member answered some."""
    commands = [op for op in after.operations if op.kind == "command"]
    failed = [op for op in after.operations if op.outcome == "unknown" or op.status in _SERVICE_FAILURES]
    if failed:
        statuses = sorted({f"{op.node} {op.status or op.outcome}" for op in failed})
        problems.append(
            f"{len(failed)} of {len(after.operations)} calls failed after healing: {statuses[:6]}"
        )
    served = {op.node for op in commands if op.outcome == "ok"}
    problems.extend(
        f"{node.name} served no command after healing" for node in members if node.target not in served
    )
