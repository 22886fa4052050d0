"""Operation histories recorded by load generators, and the checker that judges them against the journal.

Recording: a load generator creates a `History`, wraps every call it makes in `begin` and one of
`ok` / `failed` / `unknown` (or in `async with history.record(...)`), and, when it runs in its own
process, writes `to_jsonl()` to a file for the test to read back with `History.from_jsonl` and
`History.merge`.

Checking: `check(history, journal, ...)` compares what clients were told with what the journal
holds at the end of the run, and, when given them, what the read handlers received. The journal is
the truth for what was written; the client-side start and end times order operations in real time.
Those times are monotonic clock readings, so every client of one run must run on the same machine
(one monotonic clock); histories recorded on different machines cannot be merged meaningfully.

What counts as a violation, per entity:

- lost: an ok command whose token is not in the entity's journal;
- fork: one revision stored twice in the journal, or acknowledged to two commands with different
  tokens (one record per revision, with the evidence of both kinds);
- gap: the journal's revisions are not exactly 1..n (one record per missing run);
- contradiction: an ok reply whose revision is not the highest revision holding its token; a token
  stored although its command failed with a status that guarantees nothing was written; a token
  stored at revisions that are not one contiguous run, or under another entity; an ok read of a
  revision beyond the end of the journal; a read side receiving a revision the journal lacks;
- stale read: a read that started after an ok operation had ended returned a lower revision;
- revision backwards: a command that started after an ok operation had ended was acknowledged at a
  revision not above it;
- skipped / reordered: a read handler never received a stored event although it received a later
  one of the entity (or any stored event, with `caught_up=True`); or received revision r before r-1
  when it received r-1 only later;
- zombie write: the test counted a write by a node that had lost its lease reaching the journal.

Not violations: commands of unknown outcome (or failed with a status that leaves it open) that were
or were not written (`unknown_written` counts the former), and duplicate deliveries (counted).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

Kind = Literal["command", "get_state"]
Outcome = Literal["ok", "failed", "unknown"]

# A failure with one of these statuses is a promise that the command left no event behind. The server
# rejects such commands before appending, so finding their token in the journal is a contradiction.
DEFINITELY_NOT_WRITTEN: frozenset[str] = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "RESOURCE_EXHAUSTED",
    }
)

# For reference only: any status outside the "nothing written" set is treated like an unknown outcome.
# These are the usual ones: the connection or the deadline went before the reply came, or the server
# failed after the append may already have committed.
MAY_HAVE_BEEN_WRITTEN: frozenset[str] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CANCELLED"}
)


@dataclass(frozen=True)
class Operation:
    """One call a client made, as the client saw it."""

    op_id: str
    client: str
    node: str
    kind: Kind
    entity_id: str
    # Unique per command, embedded in the command so its events can be found in the journal. None for
    # reads, and for commands that may append no event (nothing of theirs could be found anyway).
    token: str | None
    start: float
    # None when the run ended with the call still in flight; its outcome is then "unknown".
    end: float | None
    outcome: Outcome
    status: str | None = None  # the gRPC status name of a failed call
    revision: int | None = None  # the revision an ok reply carried

    def to_json(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "client": self.client,
            "node": self.node,
            "kind": self.kind,
            "entity_id": self.entity_id,
            "token": self.token,
            "start": self.start,
            "end": self.end,
            "outcome": self.outcome,
            "status": self.status,
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Operation:
        return cls(
            op_id=str(data["op_id"]),
            client=str(data["client"]),
            node=str(data["node"]),
            kind=_kind(data["kind"]),
            entity_id=str(data["entity_id"]),
            token=_optional_str(data.get("token")),
            start=float(data["start"]),
            end=None if data.get("end") is None else float(data["end"]),
            outcome=_outcome(data["outcome"]),
            status=_optional_str(data.get("status")),
            revision=None if data.get("revision") is None else int(data["revision"]),
        )


def _kind(value: object) -> Kind:
    if value == "command":
        return "command"
    if value == "get_state":
        return "get_state"
    raise ValueError(f"unknown operation kind {value!r}")


def _outcome(value: object) -> Outcome:
    if value == "ok":
        return "ok"
    if value == "failed":
        return "failed"
    if value == "unknown":
        return "unknown"
    raise ValueError(f"unknown operation outcome {value!r}")


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


class History:
    """Operations recorded by one process (any number of asyncio tasks), or merged from several.

    Not thread-safe: asyncio tasks of one loop may share a History, threads may not.
    """

    def __init__(self, client: str | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client if client is not None else f"pid{os.getpid()}"
        self._clock = clock
        # Op ids must stay unique when histories of several processes are merged; a random prefix per
        # History does that without coordination.
        self._id_prefix = uuid.uuid4().hex[:8]
        self._next_seq = itertools.count(1)
        self._completed: list[Operation] = []
        self._in_flight: dict[str, Operation] = {}
        self._op_ids: set[str] = set()
        self._tokens: set[str] = set()

    def begin(
        self,
        kind: Kind,
        entity_id: str,
        *,
        node: str,
        token: str | None = None,
        client: str | None = None,
    ) -> Operation:
        """Record the start of a call; complete it with `ok`, `failed` or `unknown`."""
        if kind == "get_state" and token is not None:
            raise ValueError("a get_state writes nothing and carries no token")
        op = Operation(
            op_id=f"{self._id_prefix}-{next(self._next_seq)}",
            client=client if client is not None else self.client,
            node=node,
            kind=_kind(kind),
            entity_id=entity_id,
            token=token,
            start=self._clock(),
            end=None,
            outcome="unknown",
        )
        self._claim(op)
        self._in_flight[op.op_id] = op
        return op

    def ok(self, op: Operation, revision: int) -> Operation:
        return self._complete(op, outcome="ok", revision=revision)

    def failed(self, op: Operation, status: str) -> Operation:
        """Record a failed call. A read of a never-written entity answers NOT_FOUND: that is recorded as
        an ok read of revision 0, since it is a correct observation of the entity's state."""
        if op.kind == "get_state" and status == "NOT_FOUND":
            return self._complete(op, outcome="ok", revision=0)
        return self._complete(op, outcome="failed", status=status)

    def unknown(self, op: Operation) -> Operation:
        """Record a call whose effect the client cannot know (timeout, connection lost)."""
        return self._complete(op, outcome="unknown")

    @asynccontextmanager
    async def record(
        self,
        kind: Kind,
        entity_id: str,
        *,
        node: str,
        classify: Callable[[BaseException], str | None],
        token: str | None = None,
        client: str | None = None,
    ) -> AsyncIterator[Call]:
        """Record one call around the body, which reports the reply with `call.ok(revision)`.

        An exception from the body is recorded as failed with the status name `classify` returns for
        it, or as unknown when it returns None, and is then swallowed: a load generator records and
        moves on (the outcome is in `call.operation`). Cancellation is recorded as unknown and
        propagates.
        """
        call = Call(self, self.begin(kind, entity_id, node=node, token=token, client=client))
        try:
            yield call
        except asyncio.CancelledError:
            if not call.completed:
                call.operation = self.unknown(call.operation)
            raise
        except Exception as error:
            if not call.completed:
                status = classify(error)
                call.operation = (
                    self.unknown(call.operation) if status is None else self.failed(call.operation, status)
                )
            return
        if not call.completed:
            call.operation = self.unknown(call.operation)
            raise RuntimeError(f"the body of record() for {call.operation.op_id} reported no outcome")

    @property
    def operations(self) -> tuple[Operation, ...]:
        """Every operation in start order, calls still in flight included as unknown with no end."""
        return tuple(
            sorted([*self._completed, *self._in_flight.values()], key=lambda op: (op.start, op.op_id))
        )

    def __len__(self) -> int:
        return len(self._completed) + len(self._in_flight)

    @classmethod
    def from_operations(cls, operations: Iterable[Operation], *, client: str | None = None) -> History:
        history = cls(client)
        for op in operations:
            history._claim(op)
            history._completed.append(op)
        return history

    @classmethod
    def merge(cls, *histories: History) -> History:
        """One history holding the operations of all; op ids and command tokens must not repeat."""
        return cls.from_operations(op for history in histories for op in history.operations)

    def to_jsonl(self) -> str:
        return "".join(json.dumps(op.to_json(), sort_keys=True) + "\n" for op in self.operations)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        return cls.from_operations(
            Operation.from_json(json.loads(line)) for line in text.splitlines() if line.strip()
        )

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_jsonl(), encoding="utf-8")

    @classmethod
    def read_jsonl(cls, path: str | os.PathLike[str]) -> History:
        return cls.from_jsonl(Path(path).read_text(encoding="utf-8"))

    def _claim(self, op: Operation) -> None:
        if op.op_id in self._op_ids:
            raise ValueError(f"operation id {op.op_id} recorded twice")
        # A token found in the journal must point at one command, or the checker cannot tell whose
        # event it is; a retry must therefore carry a fresh token.
        if op.kind == "command" and op.token is not None:
            if op.token in self._tokens:
                raise ValueError(f"command token {op.token!r} used by two operations")
            self._tokens.add(op.token)
        self._op_ids.add(op.op_id)

    def _complete(
        self, op: Operation, *, outcome: Outcome, status: str | None = None, revision: int | None = None
    ) -> Operation:
        if self._in_flight.pop(op.op_id, None) is None:
            raise ValueError(f"operation {op.op_id} is not in flight in this history (completed twice?)")
        done = replace(op, end=self._clock(), outcome=outcome, status=status, revision=revision)
        self._completed.append(done)
        return done


class Call:
    """What the body of `History.record` reports the reply through."""

    def __init__(self, history: History, operation: Operation) -> None:
        self._history = history
        self.operation = operation

    @property
    def completed(self) -> bool:
        return self.operation.end is not None

    def ok(self, revision: int) -> None:
        self.operation = self._history.ok(self.operation, revision)

    def failed(self, status: str) -> None:
        self.operation = self._history.failed(self.operation, status)


# ---------------------------------------------------------------------------------------------------
# Checking


class ViolationKind(StrEnum):
    LOST = "lost"
    FORK = "fork"
    GAP = "gap"
    CONTRADICTION = "contradiction"
    STALE_READ = "stale read"
    REVISION_BACKWARDS = "revision backwards"
    SKIPPED = "skipped"
    REORDERED = "reordered"
    ZOMBIE_WRITE = "zombie write"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    entity_id: str | None
    explanation: str
    op_ids: tuple[str, ...] = ()
    revisions: tuple[int, ...] = ()
    read_handler: str | None = None

    def __str__(self) -> str:
        where = f"entity {self.entity_id}" if self.entity_id is not None else "run"
        if self.read_handler is not None:
            where += f", read handler {self.read_handler}"
        return f"{self.kind} ({where}): {self.explanation}"


@dataclass(frozen=True)
class CheckResult:
    run: str
    operations: int
    succeeded: int
    failed: int
    unknown: int
    # Commands whose outcome left the write open (unknown, or failed with a status outside the
    # "nothing written" set) that the journal turned out to hold.
    unknown_written: int
    duplicates: int  # deliveries beyond the first of each (read handler, entity, revision)
    fence_rejections: int | None = None  # None: not measured
    zombie_writes_accepted: int | None = None
    takeover_seconds: tuple[float, ...] = ()
    violations: tuple[Violation, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    def violations_of(self, kind: ViolationKind) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.kind is kind)

    def count(self, kind: ViolationKind) -> int:
        return len(self.violations_of(kind))

    def kinds(self) -> Counter[ViolationKind]:
        return Counter(v.kind for v in self.violations)


JournalEvents = Sequence[tuple[int, str | None]]  # (revision, token) as stored, any order
Deliveries = Sequence[tuple[str, int]]  # (entity id, revision) in the order one read handler received them


def check(
    history: History | Iterable[Operation],
    journal: Mapping[str, JournalEvents],
    *,
    run: str = "",
    deliveries: Mapping[str, Deliveries] | None = None,
    caught_up: bool = False,
    fence_rejections: int | None = None,
    zombie_writes_accepted: int | None = None,
    takeover_seconds: Sequence[float] = (),
    nothing_written_statuses: Collection[str] = DEFINITELY_NOT_WRITTEN,
) -> CheckResult:
    """Judge a run: the history against the journal as it ended, and the read sides' deliveries.

    `journal` maps each entity id to its stored events as (revision, token); `deliveries` maps each
    read handler to what it received, in order. With `caught_up=True` every stored event must have
    reached every read handler. The counters are reported as given, except that zombie writes
    accepted above zero are a violation.

    `nothing_written_statuses` are the failure statuses that promise the command left no event; a
    failure with any other status (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, CANCELLED, ...)
    is judged like an unknown outcome: it may or may not have been written.
    """
    operations = list(history.operations if isinstance(history, History) else history)
    if not isinstance(history, History):
        History.from_operations(operations)  # the same uniqueness rules as a recorded history
    journals = {entity: _Journal(events) for entity, events in journal.items()}
    token_places = _token_places(journals)
    ops_by_entity: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        ops_by_entity[op.entity_id].append(op)

    violations: list[Violation] = []
    unknown_written = 0
    for entity in sorted(set(journals) | set(ops_by_entity)):
        entity_journal = journals.get(entity, _Journal(()))
        entity_ops = ops_by_entity.get(entity, [])
        violations += _gaps(entity, entity_journal)
        forks, explained = _forks(entity, entity_journal, entity_ops)
        violations += forks
        for op in entity_ops:
            if op.kind == "command":
                if op.outcome == "ok":
                    if op.op_id not in explained:
                        violations += _acknowledged_write(op, entity_journal, token_places)
                elif op.token is not None and op.token in token_places:
                    if op.outcome == "failed" and op.status in nothing_written_statuses:
                        violations.append(_written_despite_failure(op, token_places[op.token]))
                    else:
                        unknown_written += 1
            elif op.outcome == "ok" and op.revision is not None and op.revision > entity_journal.top:
                violations.append(
                    Violation(
                        ViolationKind.CONTRADICTION,
                        entity,
                        f"{op.op_id} on {op.node} read revision {op.revision} "
                        f"but the journal ends at {entity_journal.top}",
                        (op.op_id,),
                        (op.revision,),
                    )
                )
        violations += _real_time_order(entity, entity_ops)

    duplicates = 0
    for handler, received in sorted((deliveries or {}).items()):
        handler_violations, handler_duplicates = _read_side(handler, received, journals, caught_up)
        violations += handler_violations
        duplicates += handler_duplicates

    if zombie_writes_accepted:
        violations.append(
            Violation(
                ViolationKind.ZOMBIE_WRITE,
                None,
                f"{zombie_writes_accepted} write(s) by a node that had lost its lease reached the journal",
            )
        )

    outcomes = Counter(op.outcome for op in operations)
    return CheckResult(
        run=run,
        operations=len(operations),
        succeeded=outcomes["ok"],
        failed=outcomes["failed"],
        unknown=outcomes["unknown"],
        unknown_written=unknown_written,
        duplicates=duplicates,
        fence_rejections=fence_rejections,
        zombie_writes_accepted=zombie_writes_accepted,
        takeover_seconds=tuple(takeover_seconds),
        violations=tuple(violations),
    )


class _Journal:
    """One entity's stored events, indexed both ways."""

    def __init__(self, events: Iterable[tuple[int, str | None]]) -> None:
        self.tokens_at: dict[int, list[str | None]] = defaultdict(list)
        for revision, token in events:
            self.tokens_at[revision].append(token)
        self.revisions = sorted(self.tokens_at)
        self.top = self.revisions[-1] if self.revisions else 0


def _token_places(journals: Mapping[str, _Journal]) -> dict[str, dict[str, list[int]]]:
    """token -> entity -> the distinct revisions holding it, ascending."""
    places: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for entity, entity_journal in journals.items():
        for revision in entity_journal.revisions:
            for token in set(entity_journal.tokens_at[revision]):
                if token is not None:
                    places[token].setdefault(entity, []).append(revision)
    return places


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending numbers grouped into maximal runs of consecutive values, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def _span(first: int, last: int) -> str:
    return f"revision {first}" if first == last else f"revisions {first}..{last}"


def _gaps(entity: str, entity_journal: _Journal) -> list[Violation]:
    violations = []
    invalid = [r for r in entity_journal.revisions if r < 1]
    if invalid:
        violations.append(
            Violation(
                ViolationKind.GAP,
                entity,
                f"journal holds revision(s) {', '.join(map(str, invalid))}; revisions start at 1",
                revisions=tuple(invalid),
            )
        )
    missing = set(range(1, entity_journal.top + 1)) - set(entity_journal.revisions)
    for first, last in _runs(missing):
        violations.append(
            Violation(
                ViolationKind.GAP,
                entity,
                f"{_span(first, last)} missing from a journal that reaches {entity_journal.top}",
                revisions=tuple(range(first, last + 1)),
            )
        )
    return violations


def _forks(
    entity: str, entity_journal: _Journal, entity_ops: Sequence[Operation]
) -> tuple[list[Violation], set[str]]:
    """Fork records, one per revision with either kind of evidence, and the ops they account for.

    Of two commands acknowledged at one revision at most one can be the event stored there; the
    other's missing or misplaced token is part of the same fork, so it is not reported again as lost
    or contradicted.
    """
    claims: dict[int, list[Operation]] = defaultdict(list)
    for op in entity_ops:
        if op.kind == "command" and op.outcome == "ok" and op.token is not None and op.revision is not None:
            claims[op.revision].append(op)
    doubly_stored = {r for r in entity_journal.revisions if len(entity_journal.tokens_at[r]) > 1}
    doubly_claimed = {r for r, ops in claims.items() if len(ops) > 1}

    violations = []
    explained: set[str] = set()
    for revision in sorted(doubly_stored | doubly_claimed):
        evidence = []
        if revision in doubly_stored:
            stored = ", ".join(repr(t) for t in entity_journal.tokens_at[revision])
            evidence.append(
                f"the journal stores it {len(entity_journal.tokens_at[revision])} times ({stored})"
            )
        claimants = claims.get(revision, []) if revision in doubly_claimed else []
        if claimants:
            acknowledged = ", ".join(
                f"{op.op_id} on {op.node} (token {op.token!r}, {_where_stored(op, entity_journal)})"
                for op in claimants
            )
            evidence.append(f"{len(claimants)} commands were acknowledged at it: {acknowledged}")
            explained.update(op.op_id for op in claimants)
        violations.append(
            Violation(
                ViolationKind.FORK,
                entity,
                f"revision {revision} written twice: " + "; ".join(evidence),
                tuple(op.op_id for op in claimants),
                (revision,),
            )
        )
    return violations, explained


def _where_stored(op: Operation, entity_journal: _Journal) -> str:
    revisions = [r for r in entity_journal.revisions if op.token in entity_journal.tokens_at[r]]
    return f"stored at {', '.join(map(str, revisions))}" if revisions else "not in the journal"


def _acknowledged_write(
    op: Operation, entity_journal: _Journal, token_places: Mapping[str, Mapping[str, list[int]]]
) -> list[Violation]:
    entity = op.entity_id
    if op.revision is None:
        return []
    if op.token is None:
        # A command recorded without a token may have appended nothing; only its revision can be judged.
        if op.revision > entity_journal.top:
            return [
                Violation(
                    ViolationKind.CONTRADICTION,
                    entity,
                    f"{op.op_id} was acknowledged at revision {op.revision} "
                    f"but the journal ends at {entity_journal.top}",
                    (op.op_id,),
                    (op.revision,),
                )
            ]
        return []
    places = token_places.get(op.token, {})
    elsewhere = sorted(e for e in places if e != entity)
    violations = []
    if elsewhere:
        violations.append(
            Violation(
                ViolationKind.CONTRADICTION,
                entity,
                f"{op.op_id}'s token {op.token!r} is stored under other entities: {', '.join(elsewhere)}",
                (op.op_id,),
                (op.revision,),
            )
        )
    revisions = places.get(entity, [])
    if not revisions:
        violations.append(
            Violation(
                ViolationKind.LOST,
                entity,
                f"{op.op_id} on {op.node} was acknowledged at revision {op.revision} "
                f"but its token {op.token!r} is not in the journal",
                (op.op_id,),
                (op.revision,),
            )
        )
        return violations
    if len(_runs(revisions)) > 1:
        violations.append(
            Violation(
                ViolationKind.CONTRADICTION,
                entity,
                f"{op.op_id}'s token {op.token!r} is stored at revisions {', '.join(map(str, revisions))}, "
                "not one contiguous run as a single append writes",
                (op.op_id,),
                tuple(revisions),
            )
        )
    if revisions[-1] != op.revision:
        violations.append(
            Violation(
                ViolationKind.CONTRADICTION,
                entity,
                f"{op.op_id} on {op.node} was acknowledged at revision {op.revision} but its token "
                f"{op.token!r} is stored at {', '.join(map(str, revisions))}",
                (op.op_id,),
                (op.revision, *revisions),
            )
        )
    return violations


def _written_despite_failure(op: Operation, places: Mapping[str, list[int]]) -> Violation:
    revisions = tuple(r for e in sorted(places) for r in places[e])
    stored = "; ".join(f"{e} at {', '.join(map(str, places[e]))}" for e in sorted(places))
    return Violation(
        ViolationKind.CONTRADICTION,
        op.entity_id,
        f"{op.op_id} on {op.node} failed with {op.status}, which promises nothing was written, "
        f"but its token {op.token!r} is stored ({stored})",
        (op.op_id,),
        revisions,
    )


def _real_time_order(entity: str, entity_ops: Sequence[Operation]) -> list[Violation]:
    """Every ok operation must see at least what any ok operation that ended before it started saw.

    Reads must not return a lower revision; a command that appends must be acknowledged above it (one
    at the same revision as an earlier command with another token is a fork, reported as such).
    """
    observed = [
        op for op in entity_ops if op.outcome == "ok" and op.revision is not None and op.end is not None
    ]
    by_end = sorted(observed, key=lambda op: op.end or 0.0)
    by_start = sorted(observed, key=lambda op: op.start)

    violations = []
    highest: Operation | None = None  # highest revision among ops that ended before the current start
    highest_seen: Operation | None = None  # the same among reads and token-less commands
    finished = 0
    for later in by_start:
        while finished < len(by_end) and (by_end[finished].end or 0.0) < later.start:
            earlier = by_end[finished]
            finished += 1
            if highest is None or _rev(earlier) > _rev(highest):
                highest = earlier
            if (earlier.kind == "get_state" or earlier.token is None) and (
                highest_seen is None or _rev(earlier) > _rev(highest_seen)
            ):
                highest_seen = earlier
        culprit: Operation | None = None
        if highest is not None and _rev(highest) > _rev(later):
            culprit = highest
        elif (
            later.kind == "command"
            and later.token is not None
            and highest_seen is not None
            and _rev(highest_seen) >= _rev(later)
        ):
            culprit = highest_seen
        if culprit is None:
            continue
        if later.kind == "get_state":
            violations.append(
                Violation(
                    ViolationKind.STALE_READ,
                    entity,
                    f"{later.op_id} on {later.node} read revision {_rev(later)} although {culprit.op_id} "
                    f"({culprit.kind} on {culprit.node}) had ended with revision {_rev(culprit)} "
                    "before it started",
                    (culprit.op_id, later.op_id),
                    (_rev(culprit), _rev(later)),
                )
            )
        else:
            # Equal revisions are only reported for a command that appends: it cannot have written a
            # revision that was already visible before it started.
            must = "above" if _rev(culprit) == _rev(later) else "at least"
            violations.append(
                Violation(
                    ViolationKind.REVISION_BACKWARDS,
                    entity,
                    f"{later.op_id} on {later.node} was acknowledged at revision {_rev(later)} but must be "
                    f"{must} revision {_rev(culprit)}, with which {culprit.op_id} ({culprit.kind} on "
                    f"{culprit.node}) had ended before it started",
                    (culprit.op_id, later.op_id),
                    (_rev(culprit), _rev(later)),
                )
            )
    return violations


def _rev(op: Operation) -> int:
    return op.revision if op.revision is not None else 0


def _read_side(
    handler: str, received: Deliveries, journals: Mapping[str, _Journal], caught_up: bool
) -> tuple[list[Violation], int]:
    per_entity: dict[str, list[int]] = defaultdict(list)
    for entity, revision in received:
        per_entity[entity].append(revision)

    violations = []
    duplicates = 0
    for entity in sorted(set(per_entity) | set(journals)):
        revisions = per_entity.get(entity, [])
        stored = set(journals[entity].revisions) if entity in journals else set()
        delivered = set(revisions)
        duplicates += len(revisions) - len(delivered)

        phantom = sorted(delivered - stored)
        if phantom:
            violations.append(
                Violation(
                    ViolationKind.CONTRADICTION,
                    entity,
                    f"received {', '.join(map(str, phantom))}, which the journal does not hold",
                    revisions=tuple(phantom),
                    read_handler=handler,
                )
            )

        # An event never delivered is reported as skipped; counting it as reordered as well would only
        # repeat that.
        seen: set[int] = set()
        for revision in revisions:
            if revision in seen:
                continue
            seen.add(revision)
            before = revision - 1
            if before in stored and before in delivered and before not in seen:
                violations.append(
                    Violation(
                        ViolationKind.REORDERED,
                        entity,
                        f"received revision {revision} before revision {before}",
                        revisions=(before, revision),
                        read_handler=handler,
                    )
                )

        furthest = max(delivered, default=0)
        never = [r for r in stored - delivered if caught_up or r < furthest]
        for first, last in _runs(never):
            reason = (
                f"but received revision {furthest}" if last < furthest else "although it should be caught up"
            )
            violations.append(
                Violation(
                    ViolationKind.SKIPPED,
                    entity,
                    f"never received {_span(first, last)} {reason}",
                    revisions=tuple(range(first, last + 1)),
                    read_handler=handler,
                )
            )
    return violations, duplicates


# ---------------------------------------------------------------------------------------------------
# Reporting


def _percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, however few the samples."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _seconds(samples: Sequence[float], percent: float) -> str:
    return f"{_percentile(samples, percent):.2f}" if samples else ""


def _optional_count(value: int | None) -> str:
    return "" if value is None else str(value)


def _sum_measured(values: Iterable[int | None]) -> int | None:
    measured = [v for v in values if v is not None]
    return sum(measured) if measured else None


_COLUMNS: tuple[tuple[str, Callable[[CheckResult], str]], ...] = (
    ("ops", lambda r: str(r.operations)),
    ("ok", lambda r: str(r.succeeded)),
    ("fail", lambda r: str(r.failed)),
    ("unk", lambda r: str(r.unknown)),
    ("unkW", lambda r: str(r.unknown_written)),
    ("lost", lambda r: str(r.count(ViolationKind.LOST))),
    ("fork", lambda r: str(r.count(ViolationKind.FORK))),
    ("gap", lambda r: str(r.count(ViolationKind.GAP))),
    ("contr", lambda r: str(r.count(ViolationKind.CONTRADICTION))),
    (
        "stale",
        lambda r: str(r.count(ViolationKind.STALE_READ) + r.count(ViolationKind.REVISION_BACKWARDS)),
    ),
    ("skip", lambda r: str(r.count(ViolationKind.SKIPPED))),
    ("reord", lambda r: str(r.count(ViolationKind.REORDERED))),
    ("dup", lambda r: str(r.duplicates)),
    ("fence", lambda r: _optional_count(r.fence_rejections)),
    ("zomb", lambda r: _optional_count(r.zombie_writes_accepted)),
    ("tk p50", lambda r: _seconds(r.takeover_seconds, 50)),
    ("tk p99", lambda r: _seconds(r.takeover_seconds, 99)),
    ("tk max", lambda r: _seconds(r.takeover_seconds, 100)),
)

_LEGEND = (
    "ops operations",
    "unk unknown outcome",
    "unkW commands of open outcome found in the journal",
    "contr contradictions",
    "stale stale reads + revisions gone backwards",
    "skip/reord deliveries skipped/reordered",
    "dup duplicate deliveries (not violations)",
    "fence fence rejections",
    "zomb zombie writes accepted",
    "tk takeover seconds (blank: none measured)",
)


def _legend_lines(width: int) -> list[str]:
    """The legend packed into lines of at most `width`, never splitting an entry."""
    lines: list[str] = []
    for entry in _LEGEND:
        if lines and len(lines[-1]) + 2 + len(entry) <= width:
            lines[-1] += "; " + entry
        else:
            lines.append(entry)
    return lines


def format_table(results: Sequence[CheckResult]) -> str:
    """One table: a row per run, then the total, then the legend."""
    total = CheckResult(
        run="total",
        operations=sum(r.operations for r in results),
        succeeded=sum(r.succeeded for r in results),
        failed=sum(r.failed for r in results),
        unknown=sum(r.unknown for r in results),
        unknown_written=sum(r.unknown_written for r in results),
        duplicates=sum(r.duplicates for r in results),
        fence_rejections=_sum_measured(r.fence_rejections for r in results),
        zombie_writes_accepted=_sum_measured(r.zombie_writes_accepted for r in results),
        takeover_seconds=tuple(s for r in results for s in r.takeover_seconds),
        violations=tuple(v for r in results for v in r.violations),
    )
    rows = [[r.run or f"run {i}", *(cell(r) for _, cell in _COLUMNS)] for i, r in enumerate(results, 1)]
    rows.append([total.run, *(cell(total) for _, cell in _COLUMNS)])
    header = ["run", *(name for name, _ in _COLUMNS)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *numbers = cells
        aligned = [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(numbers, widths[1:], strict=True))]
        return " ".join(aligned).rstrip()

    rule = "-" * len(line(header))
    legend = _legend_lines(max(len(rule), 80))
    return "\n".join([line(header), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1]), *legend])


def assert_valid(result: CheckResult, *, limit: int = 20) -> None:
    """Raise AssertionError explaining the first `limit` violations, if there are any."""
    if result.ok:
        return
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(result.kinds().items()))
    shown = "\n".join(f"  - {v}" for v in result.violations[:limit])
    more = len(result.violations) - limit
    tail = f"\n  ... and {more} more" if more > 0 else ""
    name = f"run {result.run}: " if result.run else ""
    raise AssertionError(f"{name}{len(result.violations)} violation(s): {counts}\n{shown}{tail}")
