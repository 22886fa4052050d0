"""Single-node fault scenarios: one `cos serve` node, the bank write handler, load from
tests/support/load.py, one kind of fault injected several times at seeded random moments, and the
history judged against the journal by tests/support/history.py.

Each scenario runs in two phases. The main phase is the load with faults injected into it. The after
phase is a short second load started once the last fault is repaired: it shows that the node serves
again, and its calls join the history (a stale read or a lost write shows up there as well). The
scenario returns the checker's verdict plus the expectations the checker cannot know (`problems`):
that commands succeeded at all, and that the node answered again after the faults.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cluster import BankHandler, Cluster, Node, node_base_env, postgres_store_env
from tests.support.history import DEFINITELY_NOT_WRITTEN, CheckResult, History, Operation, check
from tests.support.journal_reader import read_journal
from tests.support.load import LoadConfig, LoadProcess
from tests.support.postgres import PgServer, ThrowawayServer, fresh_database, test_server

# The load generator records DEADLINE_EXCEEDED as a failure only when the node itself answered it, and
# the node answers it only for a command abandoned before its append (docs/contract.md §3.14, D4): such a
# command's token in the journal is a contradiction. The client's own deadline is an unknown outcome.
NOTHING_WRITTEN = DEFINITELY_NOT_WRITTEN | {"DEADLINE_EXCEEDED"}


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; the defaults keep a scenario well under a minute on a busy two-core machine."""

    duration_s: float = 14.0  # the main phase's load
    after_s: float = 4.0  # the after phase's load
    entities: int = 12
    concurrency: int = 32
    deadline_s: float = 5.0
    # No fault starts later than this before the main phase ends, so that the last repair is done
    # while the load still runs.
    quiet_end_s: float = 5.0


@dataclass
class Outcome:
    result: CheckResult
    problems: list[str] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what happened)
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.problems


# ---------------------------------------------------------------------------------------------------
# Stores


@contextlib.contextmanager
def store(kind: str, workdir: Path, pg: PgServer | None = None) -> Iterator[dict[str, str]]:
    """The COS_DB_* variables of a fresh store: a SQLite file, or a new database on `pg` (or on the
    server tests.support.postgres finds when `pg` is None), dropped afterwards."""
    if kind == "sqlite":
        yield {"COS_DB_PATH": str(workdir / "cos.db")}
        return
    if kind != "postgres":
        raise ValueError(f"unknown store {kind!r}")
    with contextlib.ExitStack() as stack:
        server = pg if pg is not None else stack.enter_context(test_server())
        database = stack.enter_context(fresh_database(server, f"cos_faults_{uuid.uuid4().hex[:12]}"))
        yield postgres_store_env(server.host, server.port, server.user, server.password, database)


# ---------------------------------------------------------------------------------------------------
# Running one scenario


class Run:
    """What every scenario shares: the handler, the node, the two load phases and the verdict."""

    def __init__(self, name: str, seed: int, workdir: Path, settings: Settings) -> None:
        self.name = name
        self.seed = seed
        self.workdir = workdir
        self.settings = settings
        self.rng = random.Random(f"{name}/{seed}")
        self.logs = workdir / "logs"
        self.prefix = f"s{seed}"
        self.faults: list[tuple[float, str]] = []
        self.problems: list[str] = []
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_: object) -> None:
        self.stack.close()

    def handler(self, **extra_env: str) -> BankHandler:
        handler = BankHandler(self.logs, extra_env)
        self.stack.enter_context(handler)
        return handler

    def node(
        self,
        handler: BankHandler,
        store_env: dict[str, str],
        *,
        proxied: bool = False,
        extra_env: Mapping[str, str] | None = None,
        **overrides: str,
    ) -> Node:
        base = node_base_env(handler.port, os.environ, **{**(extra_env or {}), **overrides})
        cluster = Cluster(base, store_env, self.logs, proxied=proxied)
        self.stack.callback(cluster.close)
        return cluster.add_node()

    def load(self, node: Node, phase: str, duration_s: float, *, target: str | None = None) -> LoadProcess:
        """The load generator on `node` (or on `target`, a proxy in front of it) for one phase."""
        config = LoadConfig(
            targets=(target or node.target,),
            entities=self.settings.entities,
            concurrency=self.settings.concurrency,
            duration_s=duration_s,
            seed=self.seed if phase == "main" else self.seed + 1_000_000,
            out=self.workdir / f"history-{phase}.jsonl",
            deadline_s=self.settings.deadline_s,
            prefix=self.prefix,
            client=f"{phase}-{uuid.uuid4().hex[:6]}",
        )
        load = LoadProcess(config, self.workdir / f"load-{phase}.log")
        self.stack.callback(load.stop)
        return load

    def note(self, what: str) -> float:
        now = time.monotonic()
        self.faults.append((now, what))
        return now

    def inject(
        self,
        load: LoadProcess,
        started: float,
        fault: Callable[[], None],
        repair: Callable[[], None],
        hold_s: tuple[float, float] = (0.0, 1.0),
        *,
        pause_s: tuple[float, float] = (1.0, 3.0),
        at_least: int = 1,
    ) -> None:
        """Fault and repair at seeded moments until the main phase nears its end: a first fault 1.5-3 s
        in, repaired after a time drawn from `hold_s`, then a pause drawn from `pause_s` after each
        repair. Past the quiet end, faults go on (up to a second before the end) only while fewer than
        `at_least` were injected, so that a short phase still sees every kind a scenario cycles."""
        stop_by = started + self.settings.duration_s - self.settings.quiet_end_s
        last_chance = started + self.settings.duration_s - 1.0
        at = started + self.rng.uniform(1.5, 3.0)
        injected = 0
        while (at < stop_by or (injected < at_least and at < last_chance)) and load.popen.poll() is None:
            _sleep_until(at)
            fault()
            injected += 1
            _sleep_until(time.monotonic() + self.rng.uniform(*hold_s))
            repair()
            at = time.monotonic() + self.rng.uniform(*pause_s)
        if injected == 0:
            self.problems.append("no fault was injected: the machine was too slow for the main phase")

    def judge(self, node: Node, store_env: dict[str, str], main: LoadProcess) -> Outcome:
        history = main.wait()
        after_history = self.load(node, "after", self.settings.after_s).wait()
        merged = History.merge(history, after_history)
        journal = read_journal(store_env, prefix=self.prefix)
        result = check(
            merged, journal, run=f"{self.name} seed {self.seed}", nothing_written_statuses=NOTHING_WRITTEN
        )
        self.expect_progress(history.operations, after_history.operations)
        return Outcome(result, self.problems, self.faults, self.workdir)

    def expect_progress(self, main: tuple[Operation, ...], after: tuple[Operation, ...]) -> None:
        if not any(op.kind == "command" and op.outcome == "ok" for op in main):
            self.problems.append("no command succeeded in the main phase")
        if not any(op.kind == "command" and op.outcome == "ok" for op in after):
            statuses = sorted({op.status or op.outcome for op in after if op.outcome != "ok"})
            self.problems.append(
                f"the node did not serve commands again after the faults ({len(after)} calls: "
                f"{', '.join(statuses) or 'none'})"
            )


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


# ---------------------------------------------------------------------------------------------------
# The scenarios


def kill_node(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = Settings(),
) -> Outcome:
    """kill -9 of the node at random moments under load, each time restarted on the same store and
    ports (docs/contract.md §3.14: acknowledged means durable; §3.15: recovery from the journal)."""
    with Run(f"kill-node/{store_kind}", seed, workdir, settings) as run:
        handler = run.handler()
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        node = run.node(handler, store_env)
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()

        def fault() -> None:
            node.kill()
            run.note("kill -9 node")

        def repair() -> None:
            node.start()
            run.note("repaired: node ready")

        run.inject(main, started, fault, repair)
        return run.judge(node, store_env, main)


def stop_postgres(seed: int, workdir: Path, *, settings: Settings = Settings()) -> Outcome:
    """A throwaway PostgreSQL server stopped hard (`pg_ctl stop -m immediate`) and started again under
    load; the node is never restarted and must serve again by itself (docs/contract.md §3.10: the store
    unreachable gives UNAVAILABLE)."""
    with Run("stop-postgres", seed, workdir, settings) as run:
        handler = run.handler()
        server = ThrowawayServer()
        run.stack.callback(server.remove)
        server.start()
        pg = server.server
        store_env = postgres_store_env(pg.host, pg.port, pg.user, pg.password, "postgres")
        node = run.node(handler, store_env, COS_DB_CONNECT_TIMEOUT="1s")
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()

        def fault() -> None:
            server.stop("immediate")
            run.note("pg_ctl stop -m immediate")

        def repair() -> None:
            server.start()
            run.note("repaired: PostgreSQL started")

        run.inject(main, started, fault, repair)
        return run.judge(node, store_env, main)


def kill_handler(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = Settings(),
) -> Outcome:
    """The write handler killed with kill -9 and restarted on its port under load. Meanwhile commands
    must fail with a status, not hang (docs/contract.md §3.10: an unreachable handler is UNAVAILABLE),
    and nothing may be half-written (§3.14)."""
    with Run(f"kill-handler/{store_kind}", seed, workdir, settings) as run:
        handler = run.handler()
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        # The node's own command deadline (whole seconds) ends below the client's, so a command stuck on
        # a dead handler is answered by the node rather than cut off by the client.
        node_deadline_s = max(1, int(settings.deadline_s) - 2)
        node = run.node(handler, store_env, COS_COMMAND_HANDLER_TIMEOUT=str(node_deadline_s))
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()
        down: list[tuple[float, float]] = []

        def fault() -> None:
            handler.kill()
            down.append((run.note("kill -9 write handler"), float("inf")))

        def repair() -> None:
            handler.start()
            down[-1] = (down[-1][0], run.note("repaired: write handler listening"))

        run.inject(main, started, fault, repair)
        outcome = run.judge(node, store_env, main)
        outcome.problems += commands_without_answer(main, down)
        return outcome


def break_database_link(
    seed: int, workdir: Path, *, pg: PgServer | None = None, settings: Settings = Settings()
) -> Outcome:
    """The node's connections to PostgreSQL broken by a proxy while the database itself stays up: all
    reset at once, held both ways or only on the way back (a commit that reaches the database while its
    answer does not reach the node: the outcome the node cannot know, docs/contract.md §3.14), or
    slowed down. Then the link passes again and the node must serve again by itself."""
    with Run("db-link/postgres", seed, workdir, settings) as run:
        handler = run.handler()
        store_env = run.stack.enter_context(store("postgres", workdir, pg))
        node = run.node(handler, store_env, proxied=True, COS_DB_CONNECT_TIMEOUT="1s")
        proxy = node.proxy
        assert proxy is not None
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()

        def fault() -> None:
            kind = run.rng.choice(["reset", "blackhole", "blackhole down", "delay"])
            if kind == "reset":
                proxy.reset()
            elif kind == "blackhole":
                proxy.blackhole("both")
            elif kind == "blackhole down":
                proxy.blackhole("down")
            else:
                proxy.delay(0.3, "both")
            run.note(f"database link: {kind}")

        def repair() -> None:
            proxy.passthrough()
            run.note("repaired: database link passes")

        run.inject(main, started, fault, repair, hold_s=(0.5, 3.0))
        return run.judge(node, store_env, main)


def commands_without_answer(load: LoadProcess, down: list[tuple[float, float]]) -> list[str]:
    """Commands sent while the handler was down that the client gave up waiting for (its deadline
    passed, or the run ended with them in flight): the node should have answered each with a status.

    An unknown outcome alone is not a hang: the connection to a handler killed mid-call is reported
    with transport words that the load generator conservatively records as unknown."""
    history = History.read_jsonl(load.config.out)
    gave_up_after = load.config.deadline_s * 0.9
    hung = [
        op
        for op in history.operations
        if op.kind == "command"
        and op.outcome == "unknown"
        and (op.end is None or op.end - op.start >= gave_up_after)
        and any(went <= op.start <= back for went, back in down)
    ]
    if not hung:
        return []
    shown = ", ".join(f"{op.op_id} ({(op.end or op.start) - op.start:.1f}s)" for op in hung[:5])
    return [f"{len(hung)} command(s) sent while the handler was down got no status: {shown}"]
