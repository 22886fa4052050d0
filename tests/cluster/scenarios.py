"""Cluster scenarios: three `cos serve` members on one PostgreSQL, the bank write handler, load spread
over every member, and the four things that happen to members in production, in an order the seed
draws: one is killed (kill -9), one is paused past its leases and resumed (SIGSTOP/SIGCONT: the
zombie), one leaves gracefully (SIGTERM), one joins. A read side (the example read handler) runs on
the members throughout, its projections moved by every fault. The history is judged against the
journal (tests/support/history.py), and so are the read handler's deliveries once it has caught up:
nothing skipped, order per entity kept, duplicates counted. What the checker cannot see is measured
beside it: takeover times, and the fence rejections that prove a zombie's appends were refused
(docs/cluster.md).

The leases are shortened (TTL 3 s) so a run fits in well under a minute; `python -m tests.cluster
--default-timing` runs with the shipped defaults (TTL 10 s) to measure takeover as users see it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from chiefofstate.cli.processes import start_bank_read_handler
from chiefofstate.core.sharding import shard_of
from tests.faults.scenarios import Outcome, store
from tests.support.cluster import BankHandler, Cluster, Node, node_base_env
from tests.support.history import History, JournalEvents, check
from tests.support.journal_reader import read_journal
from tests.support.load import LoadConfig, LoadProcess
from tests.support.postgres import PgServer
from tests.support.readside_processes import FAST as FAST_READ_SIDES
from tests.support.readside_processes import DeliveryLog, read_side

SHARDS = 16
FAST_TIMING = {
    "COS_CLUSTER_HEARTBEAT_INTERVAL": "500ms",
    "COS_CLUSTER_MEMBER_TTL": "3s",
    "COS_CLUSTER_LEASE_TTL": "3s",
    "COS_CLUSTER_LEASE_RENEW_INTERVAL": "500ms",
    "COS_CLUSTER_LEASE_MARGIN": "1s",
}
DEFAULT_LEASE_TTL_S = 10.0
# Seconds of load after the last membership change before a member is made a zombie.
ZOMBIE_WARM_S = 4.0
ZOMBIE_HOLD_MAX_S = 3.0
ZOMBIE_HOLD_ATTEMPTS = 4
READ_SIDE = "bank"
CATCH_UP_S = 90.0


@dataclass(frozen=True)
class Settings:
    entities: int = 24
    concurrency: int = 32
    fast_timing: bool = True
    # Seconds of load between two events, drawn in this range: long enough for the cluster to settle.
    gap_s: tuple[float, float] = (1.5, 3.0)

    @property
    def lease_ttl_s(self) -> float:
        return 3.0 if self.fast_timing else DEFAULT_LEASE_TTL_S

    @property
    def deadline_s(self) -> float:
        """Longer than the zombie's pause (a lease TTL and a takeover): its commands in flight when it
        stopped are then still wanted when it resumes, reach their append under the old token, and are
        fenced. With the shipped 10 s leases an 8 s deadline would have expired every one of them."""
        return self.lease_ttl_s * 2 + 2


@dataclass
class Measured:
    takeover_s: list[float] = field(default_factory=list)
    fence_rejections: int = 0
    zombies: list[ZombieWatch] = field(default_factory=list)


def _dsn(store_env: dict[str, str]) -> str:
    return (
        f"postgresql://{store_env['COS_DB_USER']}:{store_env['COS_DB_PASSWORD']}@"
        f"{store_env['COS_DB_HOST']}:{store_env['COS_DB_PORT']}/{store_env['COS_DB_NAME']}"
    )


def shards_served_without(store_env: dict[str, str], gone: set[str]) -> int:
    """Entity shards whose lease is held, unexpired by the database clock, by a live member other than
    those advertising the addresses in `gone`."""
    with psycopg.connect(_dsn(store_env), connect_timeout=5) as connection:
        row = connection.execute(
            """
            SELECT count(*) FROM cos_shard_locks l JOIN cos_cluster_members m ON m.member_id = l.owner
            WHERE l.expires_at > now() AND m.left_at IS NULL AND l.shard < %s
              AND NOT (m.address = ANY(%s))
            """,
            (SHARDS, list(gone)),
        ).fetchone()
    return int(row[0]) if row else 0


def zombie_writers(store_env: dict[str, str], address: str, prefix: str) -> dict[str, str]:
    """The writer id of the last event of every entity in the shards the member at `address` holds,
    read while it is stopped. Writer ids are drawn per entity incarnation (entities/writer_ids.py), and a
    member that recovers an entity (as it must after losing its shard) draws a new one: an event written
    under one of these ids once others hold the shards is the stopped member's old incarnation writing
    without its lease."""
    with psycopg.connect(_dsn(store_env), connect_timeout=5) as connection:
        shards = {
            int(row[0])
            for row in connection.execute(
                """
                SELECT l.shard FROM cos_shard_locks l JOIN cos_cluster_members m ON m.member_id = l.owner
                WHERE m.address = %s AND l.shard < %s
                """,
                (address, SHARDS),
            ).fetchall()
        }
    latest = _latest_events(store_env, prefix)
    return {entity: writer for entity, (_, writer) in latest.items() if shard_of(entity, SHARDS) in shards}


def _latest_events(store_env: dict[str, str], prefix: str) -> dict[str, tuple[int, str]]:
    """Each entity's last event: (revision, writer id)."""
    with psycopg.connect(_dsn(store_env), connect_timeout=5) as connection:
        rows = connection.execute(
            """
            SELECT DISTINCT ON (persistence_id) persistence_id, sequence_number, writer FROM event_journal
            WHERE persistence_id LIKE %s ORDER BY persistence_id, sequence_number DESC
            """,
            (f"{prefix}-%",),
        ).fetchall()
    return {str(entity): (int(revision), str(writer)) for entity, revision, writer in rows}


@dataclass
class ZombieWatch:
    """A zombie's entities: their writer ids while it was stopped, and their last revision once other
    members held its shards (appends it sent under its lease have committed by then)."""

    writers: dict[str, str]
    taken_over_at: dict[str, int] = field(default_factory=dict)

    def taken_over(self, store_env: dict[str, str], prefix: str) -> None:
        latest = _latest_events(store_env, prefix)
        self.taken_over_at = {entity: latest[entity][0] for entity in self.writers if entity in latest}

    def writes_accepted(self, store_env: dict[str, str]) -> int:
        """Events after the takeover written by one of the zombie's incarnations."""
        if not self.writers:
            return 0
        with psycopg.connect(_dsn(store_env), connect_timeout=5) as connection:
            rows = connection.execute(
                "SELECT persistence_id, sequence_number, writer FROM event_journal "
                "WHERE persistence_id = ANY(%s)",
                (list(self.writers),),
            ).fetchall()
        return sum(
            1
            for entity, revision, writer in rows
            if int(revision) > self.taken_over_at.get(str(entity), 0)
            and str(writer) == self.writers[str(entity)]
        )


def shards_by_address(store_env: dict[str, str]) -> dict[str, int]:
    """How many entity shards each live member holds an unexpired lease on, by its address."""
    with psycopg.connect(_dsn(store_env), connect_timeout=5) as connection:
        rows = connection.execute(
            """
            SELECT m.address, count(*)
            FROM cos_shard_locks l JOIN cos_cluster_members m ON m.member_id = l.owner
            WHERE l.expires_at > now() AND m.left_at IS NULL AND l.shard < %s GROUP BY m.address
            """,
            (SHARDS,),
        ).fetchall()
    return {str(address): int(count) for address, count in rows}


def wait_for_takeover(store_env: dict[str, str], gone: set[str], since: float, limit_s: float) -> float:
    """Seconds from `since` until every shard is served by members other than `gone`."""
    give_up_at = time.monotonic() + limit_s
    while shards_served_without(store_env, gone) < SHARDS:
        if time.monotonic() > give_up_at:
            raise TimeoutError(f"shards not taken over within {limit_s}s")
        time.sleep(0.05)
    return time.monotonic() - since


def _metric(node: Node, name: str) -> float:
    """A label-less sample of the member's Prometheus exposition (0 when absent)."""
    url = f"http://127.0.0.1:{node.env['COS_PROMETHEUS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def fence_rejections_of(node: Node) -> int:
    return int(_metric(node, "cos_cluster_fence_rejections_total"))


def caught_up_deliveries(
    deliveries: DeliveryLog, journal: Mapping[str, JournalEvents]
) -> list[tuple[str, int]]:
    """(entity, revision) in the order the read handler received them, once it has received every event
    of the journal (or CATCH_UP_S has passed: the checker then reports what was skipped)."""
    wanted = {(entity, revision) for entity, events in journal.items() for revision, _ in events}
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        received = [
            (delivery.entity_id, delivery.revision)
            for delivery in deliveries.all(READ_SIDE)
            if delivery.entity_id in journal and delivery.outcome == "ok"
        ]
        if wanted <= set(received) or time.monotonic() > deadline:
            return received
        time.sleep(0.2)


def start_load(
    settings: Settings,
    nodes: Sequence[Node],
    workdir: Path,
    phase: str,
    *,
    seed: int,
    duration_s: float,
    prefix: str,
) -> LoadProcess:
    """The load generator over `nodes` for one phase of a run ("main", "after"), its history in
    `workdir`/history-`phase`.jsonl."""
    return LoadProcess(
        LoadConfig(
            targets=tuple(node.target for node in nodes),
            entities=settings.entities,
            concurrency=settings.concurrency,
            duration_s=duration_s,
            seed=seed,
            out=workdir / f"history-{phase}.jsonl",
            deadline_s=settings.deadline_s,
            prefix=prefix,
            client=f"{phase}-{uuid.uuid4().hex[:6]}",
        ),
        workdir / f"load-{phase}.log",
    )


def _address(node: Node) -> str:
    return f"127.0.0.1:{node.cluster_port}"


def _hold_with_appends_on_the_way(node: Node) -> int:
    """Hold the member's database link until appends wait behind it (its gauge
    cos_journal_pending_appends counts those queued behind the batch in flight), and return how many.
    A member whose commands in flight are all recovery reads of cold entities appends nothing while
    its link is held; the link is then passed again and, after some load, held once more."""
    assert node.proxy is not None
    waiting = 0
    for _ in range(ZOMBIE_HOLD_ATTEMPTS):
        node.proxy.blackhole("up")
        give_up_at = time.monotonic() + ZOMBIE_HOLD_MAX_S
        time.sleep(0.2)
        while (waiting := int(_metric(node, "cos_journal_pending_appends"))) < 1:
            if time.monotonic() > give_up_at:
                break
            time.sleep(0.05)
        if waiting:
            return waiting
        node.proxy.passthrough()
        time.sleep(2.0)
    node.proxy.blackhole("up")
    return waiting


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def cluster_life(
    seed: int, workdir: Path, pg: PgServer | None = None, settings: Settings = Settings()
) -> Outcome:
    """Three members under load; kill -9, SIGSTOP past the lease then SIGCONT, SIGTERM and a join, in the
    seed's order, each after a seeded gap; then a short load on the members left, and the verdict."""
    rng = random.Random(f"cluster-life/{seed}")
    logs = workdir / "logs"
    faults: list[tuple[float, str]] = []
    problems: list[str] = []
    measured = Measured()
    prefix = f"c{seed}"

    def note(what: str) -> float:
        now = time.monotonic()
        faults.append((now, what))
        return now

    with contextlib.ExitStack() as stack:
        handler = stack.enter_context(BankHandler(logs))
        store_env = stack.enter_context(store("postgres", workdir, pg))
        timing = FAST_TIMING if settings.fast_timing else {}
        # One read side, its projections spread over the members and moved by every fault.
        deliveries = DeliveryLog(workdir / "deliveries.jsonl")
        reader = start_bank_read_handler(logs, deliveries=deliveries.path, name="read-handler")
        stack.callback(reader.stop)
        base = node_base_env(
            handler.port,
            os.environ,
            COS_NUM_SHARDS=str(SHARDS),
            **timing,
            **FAST_READ_SIDES,
            **read_side(READ_SIDE, reader.ports["read_side"]),
        )
        # Each member reaches PostgreSQL through a proxy of its own, so one member's link can be held.
        cluster = stack.enter_context(Cluster(base, store_env, logs, proxied=True))
        members = [cluster.add_node() for _ in range(3)]
        events = ["kill", "zombie", "sigterm", "join"]
        rng.shuffle(events)
        duration_s = sum(settings.gap_s) / 2 * (len(events) + 1) + 3 * settings.lease_ttl_s + 12
        main = start_load(settings, members, workdir, "main", seed=seed, duration_s=duration_s, prefix=prefix)
        stack.callback(main.stop)
        alive = list(members)
        takeover_limit_s = settings.lease_ttl_s * 4 + 20
        last_change = time.monotonic()
        for event in events:
            _sleep_until(time.monotonic() + rng.uniform(*settings.gap_s))
            if event == "join":
                joined = cluster.add_node()
                alive.append(joined)
                note(f"{joined.name} joined")
                last_change = time.monotonic()
                continue
            # Someone must be left to take the shards over: a zombie needs another member, a
            # departure must not leave the cluster empty.
            while len(alive) < 2:
                joined = cluster.add_node()
                alive.append(joined)
                note(f"{joined.name} joined (so that another member is there)")
                last_change = time.monotonic()
            victim = rng.choice([node for node in alive if node.alive()])
            if event == "zombie":
                # Its shards' entities cached and busy, so that its commands in flight are appends
                # (the fence's work), not recovery reads: a member that has just taken its shards
                # spends its first moments reading, and a lapsed lease stops those commands before any
                # append, by the member's own clock.
                _sleep_until(last_change + ZOMBIE_WARM_S)
                # The member holding the most shards: a zombie that owns nothing proves nothing.
                held = shards_by_address(store_env)
                victim = max(alive, key=lambda node: held.get(_address(node), 0))
            if event == "kill":
                at = note(f"kill -9 {victim.name}")
                victim.kill()
                alive.remove(victim)
                measured.takeover_s.append(
                    wait_for_takeover(store_env, {_address(victim)}, at, takeover_limit_s)
                )
                note("shards taken over")
            elif event == "sigterm":
                # The handover is measured while the member shuts down: its shards are served by the
                # others once they hold the leases, whatever the rest of its exit takes.
                at = note(f"SIGTERM {victim.name}")
                victim.sigterm()
                alive.remove(victim)
                measured.takeover_s.append(
                    wait_for_takeover(store_env, {_address(victim)}, at, takeover_limit_s)
                )
                note("shards taken over")
                code = victim.terminate()
                note(f"{victim.name} exited with {code}")
                if code != 0:
                    problems.append(f"{victim.name} exited with {code} after SIGTERM, not 0")
            else:
                # A zombie: its database link stalls with appends on the way, then the process stops
                # (a long pause, or a VM frozen). Its leases expire and others take its shards; then
                # the link delivers what it held — appends under tokens that have moved on — and the
                # process resumes believing nothing happened.
                assert victim.proxy is not None
                at = note(f"database link of {victim.name} held")
                waiting = _hold_with_appends_on_the_way(victim)
                victim.pause()
                note(f"SIGSTOP {victim.name} with {waiting} appends waiting behind the held link")
                watch = ZombieWatch(zombie_writers(store_env, _address(victim), prefix))
                measured.zombies.append(watch)
                wait_for_takeover(store_env, {_address(victim)}, at, takeover_limit_s)
                watch.taken_over(store_env, prefix)
                victim.proxy.passthrough()
                victim.resume()
                note(f"link passed and SIGCONT {victim.name}")
                _sleep_until(time.monotonic() + 2.0)
                measured.fence_rejections += fence_rejections_of(victim)
            last_change = time.monotonic()
        history = main.wait()
        survivors = [node for node in alive if node.alive()]
        after = start_load(
            settings, survivors, workdir, "after", seed=seed + 1_000_000, duration_s=3.0, prefix=prefix
        )
        stack.callback(after.stop)
        after_history = after.wait()
        journal = read_journal(store_env, prefix=prefix)
        received = caught_up_deliveries(deliveries, journal)
        result = check(
            History.merge(history, after_history),
            journal,
            run=f"cluster seed {seed}",
            deliveries={READ_SIDE: received},
            caught_up=True,
            fence_rejections=measured.fence_rejections,
            zombie_writes_accepted=sum(watch.writes_accepted(store_env) for watch in measured.zombies),
            takeover_seconds=measured.takeover_s,
        )
        if "zombie" in events and measured.fence_rejections == 0:
            problems.append("the zombie's appends were never refused: the fence was not exercised")
        if not any(op.kind == "command" and op.outcome == "ok" for op in after_history.operations):
            problems.append("the members left did not serve commands after the faults")
        return Outcome(result, problems, faults, workdir)
