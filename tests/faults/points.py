"""kill -9 of the node at chosen points of a command's path, found with proxies rather than hooks in the
server: each fault first holds one link so that commands are known to wait at that point, then kills
the node, then settles the held bytes and starts the node again on the same store and ports.

The points, cycled in a seeded order:

- `handler`: a proxy between the node and the write handler holds one direction (the requests, or the
  handler's replies), so the commands in flight are inside `HandleCommand`; nothing of them can be
  written yet.
- `append`, then `released` or `reset` (PostgreSQL only): the node's database link is held towards the
  database until the node's `cos_journal_pending_appends` gauge shows appends waiting; after the kill
  the held bytes are either let through to PostgreSQL or reset. Let through, a commit sent by a node
  that is already dead can still land: the caller saw no answer, so the outcome was unknown.
- `reply`: a proxy between the load generator and the node holds the node's answers, so commands are
  committed but not acknowledged; after the kill the client's connections are reset. Those calls must
  be recorded as unknown (or failed), and the checker judges them against the journal.

Expected (docs/contract.md §3.14, §3.15): nothing acknowledged is lost, nothing answered as a failure
that promises nothing was written is in the journal, no revision is skipped or forked, and the node
serves again after each restart.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tests.faults.scenarios import Outcome, Run, Settings, store
from tests.support.cluster import Node
from tests.support.history import History
from tests.support.postgres import PgServer
from tests.support.proxy import Direction, Proxy

DEFAULTS = Settings()
POINTS = {"postgres": ("handler", "append", "reply"), "sqlite": ("handler", "reply")}
# How long a link is held before the kill, so that calls pile up at the point.
HOLD_BEFORE_KILL_S = (0.3, 1.0)
APPENDS_PATIENCE_S = 1.5
APPEND_HOLD_ATTEMPTS = 3
# More accounts than workers, so that while one batch of appends is held, commands on other accounts
# reach the journal writer and queue behind it.
MIN_ENTITIES = 48


def kill_at_points(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = DEFAULTS,
) -> Outcome:
    """Each fault is a kill -9 of the node with commands held at the next point of `POINTS`."""
    settings = dataclasses.replace(settings, entities=max(settings.entities, MIN_ENTITIES))
    with Run(f"kill-points/{store_kind}", seed, workdir, settings) as run:
        handler = run.handler()
        handler_link = run.stack.enter_context(Proxy("127.0.0.1", handler.port, name="write-handler"))
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        node = run.node(
            handler,
            store_env,
            proxied=store_kind == "postgres",
            COS_WRITE_SIDE_PORT=str(handler_link.port),
            COS_DB_CONNECT_TIMEOUT="1s",
        )
        client_link = run.stack.enter_context(Proxy("127.0.0.1", node.grpc_port, name="clients"))
        main = run.load(node, "main", settings.duration_s, target=client_link.address)
        started = time.monotonic()
        points = list(POINTS[store_kind])
        run.rng.shuffle(points)
        killed_at: dict[str, int] = {}
        reply_windows: list[tuple[float, float]] = []  # (replies held, node killed and clients reset)

        def fault() -> None:
            point = points[sum(killed_at.values()) % len(points)]
            if point == "handler":
                direction: Direction = run.rng.choice(["up", "down"])
                handler_link.blackhole(direction)
                time.sleep(run.rng.uniform(*HOLD_BEFORE_KILL_S))
                held = handler_link.open_connections
                node.kill()
                handler_link.passthrough()
                run.note(f"kill -9 node inside HandleCommand (handler link held {direction}, {held} open)")
            elif point == "append":
                waiting = _hold_until_appends_wait(node, run)
                node.kill()
                settle = run.rng.choice(["released", "reset"])
                assert node.proxy is not None
                if settle == "released":
                    node.proxy.passthrough()
                else:
                    node.proxy.reset()
                    node.proxy.passthrough()
                point = f"append/{settle}"
                run.note(f"kill -9 node with {waiting} appends waiting on the held database link, {settle}")
            else:
                client_link.blackhole("down")
                held_at = time.monotonic()
                time.sleep(run.rng.uniform(*HOLD_BEFORE_KILL_S))
                node.kill()
                client_link.reset()
                client_link.passthrough()
                reply_windows.append((held_at, run.note("kill -9 node with its replies held, clients reset")))
            killed_at[point] = killed_at.get(point, 0) + 1

        def repair() -> None:
            node.start()
            run.note("repaired: node ready")

        run.inject(main, started, fault, repair, (0.0, 0.0), pause_s=(0.5, 1.5), at_least=len(points))
        outcome = run.judge(node, store_env, main)
        missing = [p for p in POINTS[store_kind] if not any(k.startswith(p) for k in killed_at)]
        if missing and sum(killed_at.values()) >= len(POINTS[store_kind]):
            outcome.problems.append(f"no kill at point(s) {', '.join(missing)}")
        outcome.problems += _reply_point_unknowns(History.read_jsonl(main.config.out), run, reply_windows)
        return outcome


def _hold_until_appends_wait(node: Node, run: Run) -> int:
    """Hold the node's database link towards PostgreSQL until appends wait behind the batch in flight
    (the gauge does not count that batch); how many. When none queue up within a while (every active
    entity's append may be in the held batch), the link passes for a moment and is held again; after
    APPEND_HOLD_ATTEMPTS the kill comes with whatever is held, and 0 is returned."""
    assert node.proxy is not None
    for _ in range(APPEND_HOLD_ATTEMPTS):
        node.proxy.blackhole("up")
        give_up_at = time.monotonic() + APPENDS_PATIENCE_S
        while time.monotonic() < give_up_at:
            waiting = int(node.metric("cos_journal_pending_appends") or 0)
            if waiting > 0:
                return waiting
            time.sleep(0.05)
        node.proxy.passthrough()
        time.sleep(0.3)
    node.proxy.blackhole("up")
    run.note("no append waited behind the held database link")
    return 0


def _reply_point_unknowns(history: History, run: Run, windows: list[tuple[float, float]]) -> list[str]:
    """A kill with replies held must leave calls without an answer, recorded as unknown: none would mean
    that no reply was held, or that the client took a lost reply for an answer."""
    if not windows:
        return []
    unknown = [
        op
        for op in history.operations
        if op.kind == "command"
        and op.outcome == "unknown"
        and any(op.start <= killed and (op.end is None or op.end >= held) for held, killed in windows)
    ]
    if unknown:
        run.note(f"{len(unknown)} command(s) in flight at a reply-point kill recorded as unknown")
        return []
    return ["no command was left without an answer by a kill with its replies held"]
