"""The node's wall clock stepped forward and back by minutes to hours under load, as an NTP step or an
operator's `date -s` does, while its monotonic clock runs on.

The node runs under libfaketime (Debian's `faketime` package) with its offset read from a file that
the scenario rewrites: with `FAKETIME_CACHE_DURATION=1` the library reads the file again soon after
a rewrite (within two seconds, measured), and the running process's clock steps.
(`FAKETIME_NO_CACHE=1`, a read of the file at every clock call, made the node so slow that calls ran
into the client's deadline.) `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves the monotonic
clocks alone, as a real step does. Nothing the node guarantees may depend on the wall clock: every
timeout, passivation and lease is measured on the monotonic clock (and a lease's expiry on the
database's clock), so the run must look like one without faults. Only the events' timestamps follow
the stepped clock.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from tests.faults.scenarios import Outcome, Run, Settings, store
from tests.support.cluster import Node
from tests.support.history import History, Operation
from tests.support.journal_reader import read_write_times_ms
from tests.support.postgres import PgServer

# The library for threaded programs: it keeps its cached offset behind a lock.
_LIBRARY_PATTERNS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)

# Answers the bank gives by design, under any clock: opening an account twice, reading one not yet
# opened.
_DOMAIN_STATUSES = frozenset({"ALREADY_EXISTS", "NOT_FOUND", "FAILED_PRECONDITION"})

DEFAULTS = Settings()
# Shorter than most steps, so that a passivation judged by the wall clock would fire.
IDLE_TIMEOUT = "10m"
SNAPSHOT_FREQUENCY = "10"
STEP_S = (120.0, 3 * 3600.0)  # the size of a step: two minutes to three hours
# With FAKETIME_CACHE_DURATION=1 a process sees a new offset within two seconds (measured: 0.4-2.0 s).
SETTLE_S = 2.0


def faketime_library() -> str:
    """The path of libfaketime's library; a clear error when it is not installed."""
    for pattern in _LIBRARY_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(
        "libfaketime is not installed: the clock-jump scenario needs Debian's `faketime` package "
        "(`apt-get install faketime`; .ci/run installs it)"
    )


class SteppedClock:
    """The offset file libfaketime reads, and the environment that puts a process under it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0
        self.set(0)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": faketime_library(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # The library's "monotonic fix" of timed waits, on by default with this glibc, made two
            # Python threads handing work to each other some 50 times slower (about 100 round trips
            # in 2 s instead of 5,000-9,000), and so the SQLite node, whose store works on threads
            # of its own. Nothing needs the fix here: the monotonic clocks are not faked.
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        }

    def set(self, offset_s: int) -> None:
        """Step the clock to `offset_s` seconds from real time; a reader sees the old file or the new,
        never a part of one."""
        scratch = self.path.with_suffix(".new")
        scratch.write_text(f"{offset_s:+d}\n")
        os.replace(scratch, self.path)
        self.offset_s = offset_s


def clock_jump(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = DEFAULTS,
) -> Outcome:
    """Steps of the node's wall clock under load: each fault steps it away from real time (forward and
    backward in turn, by 2 minutes to 3 hours), each repair steps it back. On PostgreSQL the node is
    a cluster member holding every shard under a lease; none may be lost."""
    with Run(f"clock-jump/{store_kind}", seed, workdir, settings) as run:
        clock = SteppedClock(workdir / "faketime-offset")
        handler = run.handler()
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        node = run.node(
            handler,
            store_env,
            COS_ENTITY_IDLE_TIMEOUT=IDLE_TIMEOUT,
            COS_SNAPSHOT_FREQUENCY=SNAPSHOT_FREQUENCY,
            extra_env=clock.env(),
        )
        real_start_ms = time.time() * 1000
        main = run.load(node, "main", settings.duration_s)
        _wait_for_first_calls(node)  # the first step must fall on a running load
        started = time.monotonic()
        steps = 0
        away: list[tuple[int, float, float]] = []  # (offset, stepped away, stepped back) per fault

        def fault() -> None:
            nonlocal steps
            sign = 1 if steps % 2 == 0 else -1
            steps += 1
            clock.set(sign * int(run.rng.uniform(*STEP_S)))
            went = run.note(f"wall clock stepped to {clock.offset_s:+d}s")
            away.append((clock.offset_s, went, float("inf")))

        def repair() -> None:
            went = clock.offset_s
            clock.set(0)
            back = run.note(f"repaired: wall clock stepped back by {-went:+d}s to real time")
            away[-1] = (went, away[-1][1], back)

        run.inject(main, started, fault, repair, hold_s=(SETTLE_S + 0.5, SETTLE_S + 2.0))
        outcome = run.judge(node, store_env, main)
        real_span_ms = (real_start_ms, time.time() * 1000)
        history = History.read_jsonl(main.config.out)
        outcome.problems += _stamps_off_the_stepped_clock(store_env, run.prefix, history, real_span_ms, away)
        outcome.problems += _steps_without_service(workdir, outcome.faults)
        outcome.problems += _clock_driven_work(node, cluster_member=store_kind == "postgres")
        return outcome


def _stamps_off_the_stepped_clock(
    store_env: dict[str, str],
    prefix: str,
    history: History,
    real_span_ms: tuple[float, float],
    away: list[tuple[int, float, float]],
) -> list[str]:
    """Proof that the node's wall clock did move: when a command was acknowledged well inside a time
    away from real time (past SETTLE_S, when the node has read the new offset), some event must be
    stamped ahead of real time (forward) or behind it (backward), beyond a minute's slack."""
    stamps = read_write_times_ms(store_env, prefix)
    problems = []
    for direction, sign in (("ahead of", 1), ("behind", -1)):
        settled = [(went + SETTLE_S, back) for offset, went, back in away if offset * sign > 0]
        acknowledged = any(
            op.kind == "command"
            and op.outcome == "ok"
            and op.end is not None
            and any(start <= op.start and op.end <= back for start, back in settled)
            for op in history.operations
        )
        if sign > 0:
            off = [stamp for stamp in stamps if stamp > real_span_ms[1] + 60_000]
        else:
            off = [stamp for stamp in stamps if stamp < real_span_ms[0] - 60_000]
        if acknowledged and not off:
            problems.append(f"no event was stamped {direction} real time: the node's clock did not move")
    return problems


def _wait_for_first_calls(node: Node, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not node.metric("cos_entity_recoveries_total"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the load reached no entity of {node.name} in {timeout_s}s")
        time.sleep(0.1)


def _steps_without_service(workdir: Path, steps: list[tuple[float, str]]) -> list[str]:
    """Steps after which no command sent before the next step (or the end of the main phase) was
    answered, by its events or by the bank's refusal, and calls the node refused for other reasons
    than the bank's.

    A deadline or a passivation judged by the wall clock fails every command after a forward step,
    and hangs every one after a backward step; a slow moment of a busy machine does neither to all of
    them, so a few calls that ran into the client's deadline are no failure here, only counted."""
    history = History.read_jsonl(workdir / "history-main.jsonl")
    commands = [op for op in history.operations if op.kind == "command"]
    problems = []
    bounds = [moment for moment, _ in steps] + [max((op.start for op in commands), default=0.0)]
    for (moment, what), until in zip(steps, bounds[1:], strict=True):
        if not any(_answered(op) and moment <= op.start <= until for op in commands):
            problems.append(f"no command sent after the step '{what}' was answered")
    refused = [
        op
        for op in history.operations
        if op.outcome == "failed" and op.status not in _DOMAIN_STATUSES | {"DEADLINE_EXCEEDED"}
    ]
    if refused:
        shown = ", ".join(f"{op.op_id} {op.kind} {op.status}" for op in refused[:5])
        problems.append(f"{len(refused)} call(s) refused while only the clock moved: {shown}")
    return problems


def _answered(op: Operation) -> bool:
    return op.outcome == "ok" or (op.outcome == "failed" and op.status in _DOMAIN_STATUSES)


def _clock_driven_work(node: Node, *, cluster_member: bool) -> list[str]:
    """Passivation (idle timeout shorter than the largest step), snapshots and leases, read off the
    node's metrics after the run."""
    problems = []
    passivations = node.metric("cos_entity_passivations_total")
    if passivations:
        problems.append(f"{passivations:.0f} entities passivated: idleness was judged by the wall clock")
    snapshots = node.metric("cos_snapshots_written_total")
    if not snapshots:
        problems.append(f"no snapshot written (every {SNAPSHOT_FREQUENCY} events)")
    if cluster_member:
        losses = node.metric("cos_cluster_lease_losses_total")
        if losses:
            problems.append(f"{losses:.0f} shard lease(s) lost while only the wall clock moved")
        if not node.metric("cos_cluster_shards_owned"):
            problems.append("the node holds no shard after the run")
    return problems
