"""A curated mutation run: plant one realistic bug at a time and check that the fast tests catch it.

Each mutant replaces one exact piece of source (which must occur once) in a private copy of the
repository, runs the tests named for it there with `-x`, and is *killed* when they fail, *survived* when
they pass. The repository itself is never touched, so an interrupted run leaves nothing behind. The
score per package, and why each known survivor is left, are in docs/testing.md ("Mutation run").

    python scripts/mutate.py            # every mutant (`make mutate`)
    python scripts/mutate.py --short    # the few CI runs
    python scripts/mutate.py --only subscription-first-subscriber-only
    python scripts/mutate.py --only readside-offset-before-handler \
        --tests tests/integration/test_read_side_operations.py

Exit status 1 when a mutant survived that is not listed as equivalent, or a mutant no longer applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("src", "examples", "tests", "pyproject.toml")
PER_MUTANT_TIMEOUT_S = 300  # a mutant that makes a test hang is killed by pytest-timeout before this


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under src/chiefofstate/
    find: str
    replace: str
    tests: tuple[str, ...]
    short: bool = False  # part of the CI run
    equivalent: str = ""  # why its survival is not a hole in the tests

    @property
    def package(self) -> str:
        return self.path.split("/", 1)[0]


# The tests that should catch a mutant of each module: the fast unit tests of that module's package.
SHARDING = ("tests/unit/core/test_sharding.py",)
SNAPSHOTS = ("tests/unit/core/test_snapshots.py",)
COMMAND_RULES = ("tests/unit/core/test_command_rules.py",)
READSIDE_RULES = ("tests/unit/core/test_readside_rules.py",)
LEASES = ("tests/unit/core/test_leases.py",)
BREAKER = ("tests/unit/core/test_breaker.py", "tests/unit/writeside")
BATCHING = ("tests/unit/core/test_batching.py",)
ENTITIES = ("tests/unit/entities", "tests/unit/api")
GROUP_COMMIT = ("tests/unit/journal/test_group_commit.py",)
COALESCING = ("tests/unit/journal/test_coalescing.py",)
READSIDE = ("tests/unit/readside",)
HUB = ("tests/unit/subscription/test_subscription_hub.py",)
FEED = ("tests/unit/subscription/test_journal_feed.py",)

MUTANTS = (
    # ------------------------------------------------------------------------------------------ core
    Mutant(
        "core-shard-abs-of-int-min",
        "core/sharding.py",
        "absolute = hashed if hashed == _INT_MIN else abs(hashed)",
        "absolute = abs(hashed)",
        SHARDING,
    ),
    Mutant(
        "core-shard-remainder-sign",
        "core/sharding.py",
        "return -remainder if dividend < 0 else remainder",
        "return remainder",
        SHARDING,
    ),
    Mutant(
        "core-snapshot-due-boundary",
        "core/snapshots.py",
        "highest >= first_new_sequence and highest > 0",
        "highest > first_new_sequence and highest > 0",
        SNAPSHOTS,
        short=True,
    ),
    Mutant(
        "core-snapshot-retention-one-short",
        "core/snapshots.py",
        "return snapshot_sequence - self.retain * self.frequency",
        "return snapshot_sequence - (self.retain - 1) * self.frequency",
        SNAPSHOTS,
    ),
    Mutant(
        "core-entity-id-length-off-by-one",
        "core/command_rules.py",
        "if len(entity_id) > MAX_ENTITY_ID_LENGTH:",
        "if len(entity_id) >= MAX_ENTITY_ID_LENGTH:",
        COMMAND_RULES,
    ),
    Mutant(
        "core-empty-event-any-accepted",
        "core/command_rules.py",
        "            if _is_empty_any(event):\n                raise Internal(",
        "            if False:\n                raise Internal(",
        COMMAND_RULES,
    ),
    Mutant(
        "core-deprecated-event-ignored",
        "core/command_rules.py",
        'if response.HasField("event") and not _is_empty_any(response.event):',
        "if False:",
        COMMAND_RULES,
    ),
    Mutant(
        "core-revision-not-incremented",
        "core/command_rules.py",
        "revision_number=prior.revision_number + 1,",
        "revision_number=prior.revision_number,",
        COMMAND_RULES,
    ),
    Mutant(
        "core-replay-one-retry-short",
        "core/readside_rules.py",
        "if attempts_made <= REPLAY_RETRIES:",
        "if attempts_made < REPLAY_RETRIES:",
        READSIDE_RULES,
    ),
    Mutant(
        "core-skip-acts-as-stop",
        "core/readside_rules.py",
        "    if policy is FailurePolicy.SKIP:\n        return AfterFailure.SKIP",
        "    if policy is FailurePolicy.SKIP:\n        return AfterFailure.HALT",
        READSIDE_RULES,
        short=True,
    ),
    Mutant(
        "core-replay-skip-halts",
        "core/readside_rules.py",
        "return AfterFailure.SKIP if policy is FailurePolicy.REPLAY_SKIP else AfterFailure.HALT",
        "return AfterFailure.HALT",
        READSIDE_RULES,
    ),
    Mutant(
        "core-lease-usable-without-margin",
        "core/leases.py",
        "return sent_at + timing.ttl_s - timing.margin_s",
        "return sent_at + timing.ttl_s",
        LEASES,
    ),
    Mutant(
        "core-lease-usable-at-its-end",
        "core/leases.py",
        "return now < lease.valid_until",
        "return now <= lease.valid_until",
        LEASES,
    ),
    Mutant(
        "core-breaker-never-waits-to-reset",
        "core/breaker.py",
        "if now - self.opened_at < self.settings.reset_timeout_s:",
        "if now - self.opened_at < 0:",
        BREAKER,
    ),
    Mutant(
        "core-batching-waits-for-less-than-one",
        "core/batching.py",
        "return wait_s > 0 and self.per_second * wait_s >= 1.0",
        "return wait_s > 0 and self.per_second * wait_s >= 0.5",
        BATCHING,
    ),
    # -------------------------------------------------------------------------------------- entities
    Mutant(
        "entities-no-op-appends",
        "entities/command_processor.py",
        "        if not wrappers:\n            return current",
        "        if wrappers is None:\n            return current",
        ENTITIES,
    ),
    Mutant(
        "entities-expected-sequence-off-by-one",
        "entities/command_processor.py",
        "expected_sequence=current.revision,",
        "expected_sequence=current.revision + 1,",
        ENTITIES,
        short=True,
    ),
    Mutant(
        "entities-revision-limit-off-by-one",
        "entities/command_processor.py",
        "if prior.meta.revision_number + len(events) > MAX_REVISION:",
        "if prior.meta.revision_number + len(events) >= MAX_REVISION:",
        ENTITIES,
    ),
    Mutant(
        "entities-events-folded-from-the-prior-state",
        "entities/command_processor.py",
        "            wrappers.append(EventWrapper(event=event, resulting_state=state, meta=meta))",
        "            wrappers.append(EventWrapper(event=event, resulting_state=state, meta=meta))\n"
        "            state = prior.state",
        ENTITIES,
    ),
    Mutant(
        "entities-snapshot-check-from-the-prior-revision",
        "entities/command_processor.py",
        "first = request.expected_sequence + 1",
        "first = request.expected_sequence",
        ENTITIES,
    ),
    Mutant(
        "entities-recovery-ignores-snapshots",
        "entities/recovery.py",
        '        if stored.kind == "snapshot":\n',
        '        if stored.kind == "never":\n',
        ENTITIES,
    ),
    Mutant(
        "entities-cache-evicts-most-recent",
        "entities/host.py",
        "        for _ in range(excess):\n            self._resting.popitem(last=False)",
        "        for _ in range(excess):\n            self._resting.popitem(last=True)",
        ENTITIES,
    ),
    Mutant(
        "entities-passivates-busy-recent-entities",
        "entities/host.py",
        "if oldest[RESTING_LAST_USED] > threshold:",
        "if oldest[RESTING_LAST_USED] > threshold + 3600:",
        ENTITIES,
    ),
    # --------------------------------------------------------------------------------------- journal
    Mutant(
        "journal-group-commit-bound-off-by-one",
        "journal/group_commit.py",
        "if len(self._queue) >= self._max_pending:",
        "if len(self._queue) > self._max_pending:",
        GROUP_COMMIT,
    ),
    Mutant(
        "journal-group-commit-drops-a-request",
        "journal/group_commit.py",
        "batch = [self._queue.popleft() for _ in range(size)]",
        "batch = [self._queue.popleft() for _ in range(size)][1:] or [self._queue.popleft()]",
        GROUP_COMMIT,
    ),
    Mutant(
        "journal-group-commit-ignores-max-batch",
        "journal/group_commit.py",
        "len(self._queue) >= self._max_batch or not self._deciding.appends_coming()",
        "not self._deciding.appends_coming()",
        GROUP_COMMIT,
    ),
    Mutant(
        "journal-coalescing-bound-off-by-one",
        "journal/coalescing.py",
        "if len(self._queue) >= self._max_batch:",
        "if len(self._queue) > self._max_batch:",
        COALESCING,
    ),
    Mutant(
        "journal-coalescing-missing-key-answers-none",
        "journal/coalescing.py",
        'missing = LookupError(f"the batch read returned nothing for {key!r}")',
        "missing = None",
        COALESCING,
        short=True,
    ),
    # -------------------------------------------------------------------------------------- readside
    Mutant(
        "readside-offset-before-handler",
        "readside/projection.py",
        "                event = event_of(row, read_side_id)\n",
        "                event = event_of(row, read_side_id)\n"
        "                context.committer.record(self.key, row.ordering)\n",
        READSIDE,
        short=True,
    ),
    Mutant(
        "readside-reads-past-the-next-event",
        "readside/projection.py",
        "rows = await context.journal.read_shard(self.shard, self.position, settings.batch_size)",
        "rows = await context.journal.read_shard(self.shard, self.position + 1, settings.batch_size)",
        READSIDE,
    ),
    Mutant(
        "readside-attempts-counted-twice",
        "readside/projection.py",
        "            attempts += 1\n",
        "            attempts += 2\n",
        READSIDE,
    ),
    Mutant(
        "readside-commit-batch-never-hurried",
        "readside/projection.py",
        "if self._unstored >= settings.commit_batch:",
        "if self._unstored > 10 * settings.commit_batch:",
        READSIDE,
    ),
    Mutant(
        "readside-halt-without-flush",
        "readside/projection.py",
        "        await committer.flush(self.key)  # the offset stays right before the failing event\n",
        "",
        READSIDE,
    ),
    Mutant(
        "readside-committer-forgets-newer-position",
        "readside/offset_committer.py",
        "                if self._pending.get(written) == offset:\n"
        "                    del self._pending[written]",
        "                self._pending.pop(written, None)",
        READSIDE,
    ),
    # ---------------------------------------------------------------------------------- subscription
    Mutant(
        "subscription-first-subscriber-only",
        "subscription/hub.py",
        "        for subscription in targets:\n            if not subscription._offer(bodies):",
        "        for subscription in targets[:1]:\n            if not subscription._offer(bodies):",
        HUB,
        short=True,
    ),
    Mutant(
        "subscription-entity-watchers-dropped-when-all-listen",
        "subscription/hub.py",
        "        if watchers:\n            targets.extend(watchers.values())",
        "        if watchers and not targets:\n            targets.extend(watchers.values())",
        HUB,
    ),
    Mutant(
        "subscription-buffer-bound-off-by-one",
        "subscription/hub.py",
        "if self._unwritten + len(bodies) > self.capacity:",
        "if self._unwritten + len(bodies) >= self.capacity:",
        HUB,
    ),
    Mutant(
        "subscription-stream-bound-off-by-one",
        "subscription/hub.py",
        "if self._open_streams >= self._max_streams:",
        "if self._open_streams > self._max_streams:",
        HUB,
    ),
    Mutant(
        "subscription-feed-out-of-range-shard-woken",
        "subscription/feed.py",
        "if 0 <= shard < self._num_shards:",
        "if 0 <= shard <= self._num_shards:",
        FEED,
    ),
)


def copy_repository(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
            )
        else:
            shutil.copy2(source, target / name)


def run_mutant(mutant: Mutant, copy: Path, timeout_s: float) -> tuple[str, float]:
    """'killed', 'survived' or 'stale' (the source no longer has the piece to replace)."""
    path = copy / "src" / "chiefofstate" / mutant.path
    original = path.read_text()
    if original.count(mutant.find) != 1:
        return "stale", 0.0
    path.write_text(original.replace(mutant.find, mutant.replace))
    # The copy's packages come first on the path, for pytest and the processes tests start alike.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(copy / part) for part in ("src", "examples", ".")),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--timeout",
        "30",
        *mutant.tests,
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        outcome = "survived" if result.returncode == 0 else "killed"
        if result.returncode not in (0, 1):  # an error rather than a failed assertion still kills it
            outcome = "killed"
    except subprocess.TimeoutExpired:
        outcome = "killed"  # it hung the tests, which pytest-timeout reports as a failure too
    finally:
        path.write_text(original)
    return outcome, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--short", action="store_true", help="only the mutants CI runs")
    parser.add_argument("--only", action="append", default=[], help="a mutant by name (repeatable)")
    parser.add_argument("--package", action="append", default=[], help="core, entities, journal, ...")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--tests", nargs="+", help="run these tests instead of each mutant's own (e.g. an integration test)"
    )
    arguments = parser.parse_args()
    chosen = [
        mutant
        for mutant in MUTANTS
        if (not arguments.short or mutant.short)
        and (not arguments.only or mutant.name in arguments.only)
        and (not arguments.package or mutant.package in arguments.package)
    ]
    if arguments.list:
        for mutant in chosen:
            print(f"{mutant.name:55} {mutant.path}")
        return 0
    if not chosen:
        print("no mutant matches", file=sys.stderr)
        return 2
    results: dict[str, list[tuple[Mutant, str]]] = defaultdict(list)
    # SIGTERM ends the run like Ctrl-C: the running tests are killed and the copy is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="cos-mutants-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        for mutant in chosen:
            if arguments.tests:
                mutant = dataclasses.replace(mutant, tests=tuple(arguments.tests))
            outcome, took = run_mutant(mutant, copy, PER_MUTANT_TIMEOUT_S)
            shown = "equivalent" if outcome == "survived" and mutant.equivalent else outcome
            print(f"{shown:10} {took:6.1f}s  {mutant.name}", flush=True)
            results[mutant.package].append((mutant, outcome))
    print(f"\n{'package':14} {'mutants':>7} {'killed':>6} {'equiv':>5} {'score':>6}")
    failing = []
    for package, outcomes in sorted(results.items()):
        killed = sum(outcome == "killed" for _, outcome in outcomes)
        equivalent = sum(outcome == "survived" and bool(m.equivalent) for m, outcome in outcomes)
        judged = len(outcomes) - equivalent
        score = f"{100 * killed / judged:.0f}%" if judged else "-"
        print(f"{package:14} {len(outcomes):7} {killed:6} {equivalent:5} {score:>6}")
        failing += [m.name for m, outcome in outcomes if outcome == "stale"]
        failing += [m.name for m, outcome in outcomes if outcome == "survived" and not m.equivalent]
    if failing:
        print("\nsurvived or no longer applies: " + ", ".join(failing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
