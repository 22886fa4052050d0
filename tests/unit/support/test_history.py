from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.history import (
    DEFINITELY_NOT_WRITTEN,
    MAY_HAVE_BEEN_WRITTEN,
    CheckResult,
    History,
    Operation,
    Outcome,
    ViolationKind,
    assert_valid,
    check,
    format_table,
)

E = "e"


def cmd(
    op_id: str,
    token: str | None,
    start: float,
    end: float | None,
    revision: int | None = None,
    *,
    outcome: Outcome = "ok",
    status: str | None = None,
    entity: str = E,
    node: str = "n1",
) -> Operation:
    return Operation(op_id, "w1", node, "command", entity, token, start, end, outcome, status, revision)


def get(
    op_id: str, start: float, end: float, revision: int, *, entity: str = E, node: str = "n1"
) -> Operation:
    return Operation(op_id, "w1", node, "get_state", entity, None, start, end, "ok", None, revision)


# A clean run: A writes one event, B writes two (its token on both, the reply carries the last), and a
# read after both sees the end of the journal.
CLEAN_OPS = [cmd("A", "a", 0, 1, 1), cmd("B", "b", 2, 3, 3), get("R", 4, 5, 3)]
CLEAN_JOURNAL = {E: [(1, "a"), (2, "b"), (3, "b")]}
CLEAN_DELIVERIES = {"h": [(E, 1), (E, 2), (E, 3)]}


def only(result: CheckResult, kind: ViolationKind) -> None:
    """The result holds exactly one violation, of this kind."""
    assert result.kinds() == Counter({kind: 1}), [str(v) for v in result.violations]


# ------------------------------------------------------------------------------------------------
# Hand-written histories, each breaking one rule


def test_a_clean_run_passes() -> None:
    result = check(
        CLEAN_OPS, CLEAN_JOURNAL, deliveries=CLEAN_DELIVERIES, caught_up=True, zombie_writes_accepted=0
    )
    assert_valid(result)
    assert (result.operations, result.succeeded, result.failed, result.unknown) == (3, 3, 0, 0)
    assert result.duplicates == 0


def test_an_acknowledged_command_missing_from_the_journal_is_lost() -> None:
    result = check(CLEAN_OPS[:1], {})
    only(result, ViolationKind.LOST)
    (violation,) = result.violations
    assert (violation.entity_id, violation.op_ids, violation.revisions) == (E, ("A",), (1,))
    assert "'a' is not in the journal" in violation.explanation


def test_a_revision_stored_twice_is_a_fork() -> None:
    result = check(CLEAN_OPS, {E: [(1, "a"), (2, "b"), (3, "b"), (3, "x")]})
    only(result, ViolationKind.FORK)
    assert result.violations[0].revisions == (3,)


def test_two_commands_acknowledged_at_one_revision_are_one_fork_and_nothing_else() -> None:
    # B's token sits at 2 though it was told 1: that is the same fork, not a second violation.
    ops = [cmd("A", "a", 0, 2, 1, node="n1"), cmd("B", "b", 1, 3, 1, node="n2")]
    result = check(ops, {E: [(1, "a"), (2, "b")]})
    only(result, ViolationKind.FORK)
    (violation,) = result.violations
    assert violation.op_ids == ("A", "B")
    assert "B on n2 (token 'b', stored at 2)" in violation.explanation


def test_a_missing_revision_is_a_gap() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("C", "c", 2, 3, 4)]
    result = check(ops, {E: [(1, "a"), (4, "c")]})
    only(result, ViolationKind.GAP)
    assert result.violations[0].revisions == (2, 3)


def test_a_journal_starting_below_one_is_a_gap() -> None:
    only(check([], {E: [(0, None), (1, None)]}), ViolationKind.GAP)


def test_a_reply_revision_other_than_where_the_token_sits_is_a_contradiction() -> None:
    result = check([cmd("A", "a", 0, 1, 2)], {E: [(1, "a")]})
    only(result, ViolationKind.CONTRADICTION)
    assert result.violations[0].revisions == (2, 1)


def test_a_multi_event_command_is_judged_by_its_last_event() -> None:
    assert check([cmd("B", "b", 0, 1, 2)], {E: [(1, "b"), (2, "b")]}).ok
    only(check([cmd("B", "b", 0, 1, 1)], {E: [(1, "b"), (2, "b")]}), ViolationKind.CONTRADICTION)


def test_a_token_in_two_separate_places_is_a_contradiction() -> None:
    result = check([cmd("A", "a", 0, 1, 3), cmd("X", "x", 0, 1, 2)], {E: [(1, "a"), (2, "x"), (3, "a")]})
    only(result, ViolationKind.CONTRADICTION)
    assert "not one contiguous run" in result.violations[0].explanation


def test_a_token_stored_under_another_entity_is_a_contradiction() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("F", "f", 0, 1, 2)]
    result = check(ops, {E: [(1, "a"), (2, "f")], "other": [(1, "a")]})
    only(result, ViolationKind.CONTRADICTION)
    assert "other" in result.violations[0].explanation


@pytest.mark.parametrize("status", sorted(DEFINITELY_NOT_WRITTEN - {"NOT_FOUND"}))
def test_a_token_written_after_a_definite_failure_is_a_contradiction(status: str) -> None:
    ops = [cmd("A", "a", 0, 1, outcome="failed", status=status)]
    result = check(ops, {E: [(1, "a")]})
    only(result, ViolationKind.CONTRADICTION)
    assert status in result.violations[0].explanation
    assert result.unknown_written == 0


@pytest.mark.parametrize("status", sorted(MAY_HAVE_BEEN_WRITTEN))
def test_a_failure_that_may_have_written_passes_written_or_not(status: str) -> None:
    ops = [cmd("A", "a", 0, 1, outcome="failed", status=status)]
    written = check(ops, {E: [(1, "a")]})
    assert written.ok
    assert written.unknown_written == 1
    not_written = check(ops, {})
    assert not_written.ok
    assert not_written.unknown_written == 0


def test_the_nothing_written_statuses_are_a_parameter() -> None:
    ops = [cmd("A", "a", 0, 1, outcome="failed", status="ABORTED")]
    result = check(ops, {E: [(1, "a")]}, nothing_written_statuses={"INVALID_ARGUMENT"})
    assert result.ok
    assert result.unknown_written == 1


def test_unknown_outcomes_pass_written_or_not_and_the_written_ones_are_counted() -> None:
    ops = [
        cmd("A", "a", 0, 1, 1),
        cmd("U1", "u1", 2, 3, outcome="unknown"),
        cmd("U2", "u2", 2, 3, outcome="unknown"),
        cmd("U3", "u3", 2, None, outcome="unknown"),  # still in flight when the run ended
    ]
    result = check(ops, {E: [(1, "a"), (2, "u2"), (3, "u3")]})
    assert_valid(result)
    assert (result.unknown, result.unknown_written) == (3, 2)


def test_a_read_after_an_acknowledged_command_returning_less_is_stale() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("B", "b", 2, 3, 2, node="n1"), get("R", 4, 5, 1, node="n2")]
    result = check(ops, {E: [(1, "a"), (2, "b")]})
    only(result, ViolationKind.STALE_READ)
    (violation,) = result.violations
    assert (violation.op_ids, violation.revisions) == (("B", "R"), (2, 1))
    assert "R on n2 read revision 1" in violation.explanation


def test_a_read_after_a_read_returning_less_is_stale() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("B", "b", 0, 3, 2), get("R1", 1.5, 2, 2), get("R2", 2.5, 4, 1)]
    result = check(ops, {E: [(1, "a"), (2, "b")]})
    only(result, ViolationKind.STALE_READ)
    assert result.violations[0].op_ids == ("R1", "R2")


def test_a_read_overlapping_the_command_may_return_either_revision() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("B", "b", 2, 5, 2), get("R1", 3, 4, 1), get("R2", 3, 6, 2)]
    assert_valid(check(ops, {E: [(1, "a"), (2, "b")]}))


def test_operations_ending_and_starting_at_the_same_instant_are_not_ordered() -> None:
    ops = [cmd("A", "a", 0, 1, 1), cmd("B", "b", 2, 3, 2), get("R", 3, 4, 1)]
    assert_valid(check(ops, {E: [(1, "a"), (2, "b")]}))


def test_a_later_command_acknowledged_lower_is_a_revision_going_backwards() -> None:
    # The journal agrees with both replies; only real-time order shows that B cannot precede A.
    ops = [cmd("A", "a", 0, 3, 2, node="n1"), cmd("B", "b", 4, 5, 1, node="n2")]
    result = check(ops, {E: [(1, "b"), (2, "a")]})
    only(result, ViolationKind.REVISION_BACKWARDS)
    assert result.violations[0].op_ids == ("A", "B")


def test_a_command_acknowledged_at_a_revision_already_read_went_backwards() -> None:
    ops = [cmd("A", "a", 0, 1, 1), get("R", 2, 3, 2), cmd("B", "b", 1, 2.5, 2), cmd("C", "c", 4, 5, 2)]
    result = check(ops, {E: [(1, "a"), (2, "c")]})
    # B is lost and C claims the revision B was acknowledged at (a fork); C also cannot have written
    # a revision R had read before C started.
    assert result.kinds() == Counter({ViolationKind.FORK: 1, ViolationKind.REVISION_BACKWARDS: 1})
    (backwards,) = result.violations_of(ViolationKind.REVISION_BACKWARDS)
    assert backwards.op_ids == ("R", "C")
    assert "must be above revision 2" in backwards.explanation


def test_a_command_without_a_token_may_repeat_the_revision_it_found() -> None:
    ops = [cmd("A", "a", 0, 1, 1), get("R", 2, 3, 1), cmd("N", None, 4, 5, 1), get("R2", 6, 7, 1)]
    assert_valid(check(ops, {E: [(1, "a")]}))


def test_a_read_beyond_the_end_of_the_journal_is_a_contradiction() -> None:
    result = check([cmd("A", "a", 0, 1, 1), get("R", 0.5, 2, 2)], {E: [(1, "a")]})
    only(result, ViolationKind.CONTRADICTION)


def test_a_read_of_a_never_written_entity_at_revision_zero_passes() -> None:
    assert_valid(check([get("R", 0, 1, 0, entity="nobody")], {}))


def test_an_event_never_delivered_before_a_later_one_is_skipped_not_reordered() -> None:
    result = check(CLEAN_OPS, CLEAN_JOURNAL, deliveries={"h": [(E, 1), (E, 3)]})
    only(result, ViolationKind.SKIPPED)
    (violation,) = result.violations
    assert (violation.read_handler, violation.revisions) == ("h", (2,))


def test_an_undelivered_tail_is_skipped_only_when_the_read_side_must_be_caught_up() -> None:
    behind = {"h": [(E, 1), (E, 2)], "idle": []}
    assert check(CLEAN_OPS, CLEAN_JOURNAL, deliveries=behind).ok
    result = check(CLEAN_OPS, CLEAN_JOURNAL, deliveries=behind, caught_up=True)
    assert result.kinds() == Counter({ViolationKind.SKIPPED: 2})
    assert [(v.read_handler, v.revisions) for v in result.violations] == [("h", (3,)), ("idle", (1, 2, 3))]


def test_a_revision_delivered_before_its_predecessor_is_reordered() -> None:
    result = check(CLEAN_OPS, CLEAN_JOURNAL, deliveries={"h": [(E, 1), (E, 3), (E, 2)]})
    only(result, ViolationKind.REORDERED)
    assert result.violations[0].revisions == (2, 3)


def test_redeliveries_are_counted_as_duplicates_not_violations() -> None:
    replayed = {"h": [(E, 1), (E, 2), (E, 1), (E, 2), (E, 3)], "g": [(E, 1), (E, 2), (E, 3), (E, 3)]}
    result = check(CLEAN_OPS, CLEAN_JOURNAL, deliveries=replayed, caught_up=True)
    assert_valid(result)
    assert result.duplicates == 3


def test_a_delivery_of_a_revision_the_journal_lacks_is_a_contradiction() -> None:
    result = check(CLEAN_OPS, CLEAN_JOURNAL, deliveries={"h": [(E, 1), (E, 2), (E, 3), (E, 4)]})
    only(result, ViolationKind.CONTRADICTION)


def test_an_accepted_zombie_write_is_a_violation_and_the_other_counters_are_only_reported() -> None:
    result = check(
        CLEAN_OPS, CLEAN_JOURNAL, zombie_writes_accepted=1, fence_rejections=7, takeover_seconds=[2.0]
    )
    only(result, ViolationKind.ZOMBIE_WRITE)
    assert result.violations[0].entity_id is None
    quiet = check(
        CLEAN_OPS, CLEAN_JOURNAL, zombie_writes_accepted=0, fence_rejections=7, takeover_seconds=[2.0]
    )
    assert quiet.ok
    assert (quiet.fence_rejections, quiet.takeover_seconds) == (7, (2.0,))


def test_operations_with_repeated_ids_or_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="recorded twice"):
        check([cmd("A", "a", 0, 1, 1), cmd("A", "b", 0, 1, 2)], {})
    with pytest.raises(ValueError, match="two operations"):
        check([cmd("A", "a", 0, 1, 1), cmd("B", "a", 0, 1, 2)], {})


# ------------------------------------------------------------------------------------------------
# Reporting


def test_assert_valid_explains_the_first_violations() -> None:
    many_lost = [cmd(f"A{i}", f"a{i}", 0, 1, i + 1) for i in range(25)]
    result = check(many_lost, {}, run="partition")
    with pytest.raises(AssertionError) as caught:
        assert_valid(result)
    message = str(caught.value)
    assert message.startswith("run partition: 25 violation(s): 25 lost")
    assert "lost (entity e): A0 on n1 was acknowledged at revision 1" in message
    assert message.count("\n  - ") == 20
    assert "... and 5 more" in message


def test_format_table_has_a_row_per_run_a_total_and_a_legend() -> None:
    clean = check(
        CLEAN_OPS, CLEAN_JOURNAL, run="kill-9", fence_rejections=2, takeover_seconds=[1.0, 3.0, 2.0]
    )
    lossy = check(CLEAN_OPS, {E: [(1, "a")]}, run="db-outage", deliveries={"h": [(E, 1), (E, 1)]})
    table = format_table([clean, lossy])
    lines = table.splitlines()
    assert lines[0].split() == [
        "run", "ops", "ok", "fail", "unk", "unkW", "lost", "fork", "gap", "contr", "stale", "skip",
        "reord", "dup", "fence", "zomb", "tk", "p50", "tk", "p99", "tk", "max",
    ]  # fmt: skip
    assert lines[2].split() == [
        "kill-9", "3", "3", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "2",
        "2.00", "3.00", "3.00",
    ]  # fmt: skip
    # db-outage lost B and the read beyond the journal contradicts it; nothing measured leaves blanks.
    assert lines[3].split() == ["db-outage", "3", "3", "0", "0", "0", "1", "0", "0", "1", "0", "0", "0", "1"]
    assert lines[5].split()[:15] == [
        "total",
        "6",
        "6",
        "0",
        "0",
        "0",
        "1",
        "0",
        "0",
        "1",
        "0",
        "0",
        "0",
        "1",
        "2",
    ]
    assert lines[6].startswith("ops operations")
    assert max(len(line) for line in lines) <= 120


def test_format_table_percentiles_are_measured_values() -> None:
    samples = [float(s) for s in range(1, 101)]
    row = format_table([check([], {}, run="r", takeover_seconds=samples)]).splitlines()[2]
    assert row.split()[-3:] == ["50.00", "99.00", "100.00"]


# ------------------------------------------------------------------------------------------------
# Recording


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_begin_and_complete_record_times_outcomes_and_revisions() -> None:
    history = History("loadgen", clock=FakeClock())
    write = history.begin("command", E, node="n1", token="a")
    read = history.begin("get_state", E, node="n2", client="worker-7")
    refused = history.begin("command", E, node="n1", token="r")
    lost_track = history.begin("command", E, node="n3", token="u")
    history.ok(write, 1)
    history.ok(read, 1)
    history.failed(refused, "ABORTED")
    history.unknown(lost_track)
    by_token = {op.token: op for op in history.operations}
    assert (by_token["a"].start, by_token["a"].end, by_token["a"].revision) == (1.0, 5.0, 1)
    assert (by_token["r"].outcome, by_token["r"].status) == ("failed", "ABORTED")
    assert by_token["u"].outcome == "unknown"
    assert by_token[None].client == "worker-7"
    assert by_token["a"].client == "loadgen"
    assert len({op.op_id for op in history.operations}) == 4


def test_not_found_for_a_read_is_an_ok_read_of_revision_zero() -> None:
    history = History()
    read = history.failed(history.begin("get_state", "nobody", node="n1"), "NOT_FOUND")
    assert (read.outcome, read.revision, read.status) == ("ok", 0, None)
    refused = history.failed(history.begin("command", "nobody", node="n1", token="t"), "NOT_FOUND")
    assert (refused.outcome, refused.status) == ("failed", "NOT_FOUND")


def test_calls_still_in_flight_are_reported_as_unknown_without_an_end() -> None:
    history = History()
    history.begin("command", E, node="n1", token="a")
    (op,) = history.operations
    assert (op.outcome, op.end) == ("unknown", None)


def test_recording_misuse_is_refused() -> None:
    history = History()
    op = history.begin("command", E, node="n1", token="a")
    history.ok(op, 1)
    with pytest.raises(ValueError, match="not in flight"):
        history.unknown(op)
    with pytest.raises(ValueError, match="two operations"):
        history.begin("command", E, node="n1", token="a")
    with pytest.raises(ValueError, match="no token"):
        history.begin("get_state", E, node="n1", token="x")


class Unavailable(Exception):
    pass


class Refused(Exception):
    pass


def status_of(error: BaseException) -> str | None:
    if isinstance(error, Refused):
        return "ABORTED"
    if isinstance(error, Unavailable):
        return "UNAVAILABLE"
    return None


async def test_record_classifies_what_the_body_raises_and_swallows_it() -> None:
    history = History()
    async with history.record("command", E, node="n1", token="a", classify=status_of) as call:
        call.ok(1)
    async with history.record("command", E, node="n1", token="r", classify=status_of) as call:
        raise Refused
    async with history.record("command", E, node="n1", token="u", classify=status_of) as call:
        raise TimeoutError
    async with history.record("get_state", "nobody", node="n1", classify=lambda _: "NOT_FOUND") as call:
        raise LookupError
    outcomes = [(op.token, op.outcome, op.status, op.revision) for op in history.operations]
    assert outcomes == [
        ("a", "ok", None, 1),
        ("r", "failed", "ABORTED", None),
        ("u", "unknown", None, None),
        (None, "ok", None, 0),
    ]
    assert call.operation.revision == 0


async def test_record_marks_a_cancelled_call_unknown_and_lets_the_cancellation_through() -> None:
    history = History()
    started = asyncio.Event()

    async def stuck_call() -> None:
        async with history.record("command", E, node="n1", token="a", classify=status_of):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck_call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (op,) = history.operations
    assert op.outcome == "unknown"
    assert op.end is not None


async def test_record_refuses_a_body_that_reports_nothing() -> None:
    history = History()
    with pytest.raises(RuntimeError, match="reported no outcome"):
        async with history.record("command", E, node="n1", token="a", classify=status_of):
            pass
    assert history.operations[0].outcome == "unknown"


def test_histories_survive_a_json_lines_round_trip(tmp_path: Path) -> None:
    history = History("p1", clock=FakeClock())
    history.ok(history.begin("command", E, node="n1", token="a"), 1)
    history.failed(history.begin("command", E, node="n1", token="b"), "UNAVAILABLE")
    history.failed(history.begin("get_state", "nobody", node="n2"), "NOT_FOUND")
    history.begin("command", E, node="n3", token="c")  # still in flight
    assert History.from_jsonl(history.to_jsonl()).operations == history.operations
    path = tmp_path / "p1.jsonl"
    history.write_jsonl(path)
    assert History.read_jsonl(path).operations == history.operations


def test_histories_of_several_processes_merge_in_start_order() -> None:
    clock = FakeClock()
    first, second = History("p1", clock=clock), History("p2", clock=clock)
    a = first.begin("command", E, node="n1", token="a")
    b = second.begin("command", E, node="n2", token="b")
    first.ok(a, 1)
    second.ok(b, 2)
    merged = History.merge(first, second)
    assert [op.token for op in merged.operations] == ["a", "b"]
    assert [op.client for op in merged.operations] == ["p1", "p2"]
    assert check(merged, {E: [(1, "a"), (2, "b")]}).ok
    with pytest.raises(ValueError, match="recorded twice"):
        History.merge(first, first)


def test_merging_histories_that_reuse_a_token_is_refused() -> None:
    first, second = History(), History()
    first.begin("command", E, node="n1", token="a")
    second.begin("command", E, node="n1", token="a")
    with pytest.raises(ValueError, match="two operations"):
        History.merge(first, second)


# ------------------------------------------------------------------------------------------------
# Properties: a simulated correct system passes; the same run broken in one way does not


ENTITIES = ("e0", "e1", "e2")
NEVER_WRITTEN = "e-none"
NODES = ("n1", "n2", "n3")


class SteppingClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    history: History
    op: Operation
    # ok: acknowledged; refused: fails with a nothing-written status; open: the client never learns,
    # and the write lands before the reply, after it ("late") or never.
    plan: str
    events: int
    lands: str = "never"
    applied: bool = False
    revision: int = 0


class CorrectSystem:
    """One writer applying calls atomically at a point between their start and end (or, for calls whose
    outcome the client never learns, possibly after their end or never), recorded by two client
    processes, with read handlers receiving the journal's commit order at least once."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.clock = SteppingClock()
        self.clients = [History(f"client{i}", clock=self.clock) for i in range(2)]
        self.journal: dict[str, list[tuple[int, str | None]]] = {}
        self.commit_order: list[tuple[str, int]] = []
        self.in_flight: list[Call] = []
        self.landing_late: list[Call] = []
        self.written_tokens: set[str] = set()
        self.token_numbers = itertools.count()

    def run(self, steps: int) -> None:
        actions: list[Callable[[], object]] = [
            self.begin,
            self.apply,
            self.complete,
            self.land_late,
            self.foreign_write,
        ]
        for _ in range(steps):
            self.clock.now += self.rnd.choice((0.0, 0.5, 1.0))
            self.rnd.choices(actions, weights=(4, 3, 3, 1, 1))[0]()
        self.drain()
        self.acknowledged_tail()

    def top(self, entity: str) -> int:
        return len(self.journal.get(entity, []))

    def append(self, entity: str, token: str | None, events: int) -> int:
        for _ in range(events):
            revision = self.top(entity) + 1
            self.journal.setdefault(entity, []).append((revision, token))
            self.commit_order.append((entity, revision))
        if token is not None and events:
            self.written_tokens.add(token)
        return self.top(entity)

    def begin(self, plan: str | None = None, entity: str | None = None, events: int | None = None) -> Call:
        history = self.rnd.choice(self.clients)
        node = self.rnd.choice(NODES)
        if plan is None and self.rnd.random() < 0.3:
            op = history.begin("get_state", entity or self.rnd.choice((*ENTITIES, NEVER_WRITTEN)), node=node)
            call = Call(history, op, self.rnd.choice(("ok", "ok", "open")), 0)
        else:
            events = self.rnd.choice((0, 1, 1, 1, 2, 3)) if events is None else events
            token = f"t{next(self.token_numbers)}" if events else None
            op = history.begin("command", entity or self.rnd.choice(ENTITIES), node=node, token=token)
            plan = plan or self.rnd.choice(("ok", "ok", "ok", "refused", "open"))
            call = Call(history, op, plan, events, lands=self.rnd.choice(("now", "late", "never")))
        self.in_flight.append(call)
        return call

    def needs_applying(self, call: Call) -> bool:
        return not call.applied and (call.plan == "ok" or (call.plan == "open" and call.lands == "now"))

    def apply(self, call: Call | None = None) -> None:
        if call is None:
            candidates = [c for c in self.in_flight if self.needs_applying(c)]
            if not candidates:
                return
            call = self.rnd.choice(candidates)
        entity = call.op.entity_id
        call.revision = (
            self.top(entity)
            if call.op.kind == "get_state"
            else self.append(entity, call.op.token, call.events)
        )
        call.applied = True

    def complete(self, call: Call | None = None) -> None:
        if call is None:
            candidates = [c for c in self.in_flight if not self.needs_applying(c)]
            if not candidates:
                return
            call = self.rnd.choice(candidates)
        self.in_flight.remove(call)
        if call.plan == "ok":
            if call.op.kind == "get_state" and call.revision == 0:
                call.history.failed(call.op, "NOT_FOUND")
            else:
                call.history.ok(call.op, call.revision)
        elif call.plan == "refused":
            call.history.failed(call.op, self.rnd.choice(sorted(DEFINITELY_NOT_WRITTEN)))
        else:
            if self.rnd.random() < 0.5:
                call.history.unknown(call.op)
            else:
                call.history.failed(call.op, self.rnd.choice(sorted(MAY_HAVE_BEEN_WRITTEN)))
            if call.lands == "late":
                self.landing_late.append(call)

    def land_late(self) -> None:
        if self.landing_late:
            self.apply(self.landing_late.pop(self.rnd.randrange(len(self.landing_late))))

    def foreign_write(self) -> None:
        self.append(self.rnd.choice(ENTITIES), None, 1)

    def drain(self) -> None:
        for call in list(self.in_flight):
            self.clock.now += 1.0
            if self.rnd.random() < 0.2:
                # Still in flight when the run ends: whatever it was going to do, the client never knew.
                if call.op.kind == "command" and self.rnd.random() < 0.5:
                    self.apply(call)
                self.in_flight.remove(call)
                continue
            if self.needs_applying(call):
                self.apply(call)
            self.clock.now += 1.0
            self.complete(call)
        for call in self.landing_late:
            if self.rnd.random() < 0.5:
                self.apply(call)

    def acknowledged_tail(self) -> None:
        """Calls in sequence on e0 that every mutation below can find: two acknowledged commands (three
        events), a refused command with a token, and a read after them."""
        for plan, events in (("ok", 2), ("ok", 1), ("refused", 1), ("ok", 0)):
            self.clock.now += 1.0
            if events:
                call = self.begin(plan, "e0", events)
            else:
                history = self.rnd.choice(self.clients)
                call = Call(history, history.begin("get_state", "e0", node="n1"), "ok", 0)
                self.in_flight.append(call)
            if plan == "ok":
                self.clock.now += 1.0
                self.apply(call)
            self.clock.now += 1.0
            self.complete(call)

    def deliveries(self, handlers: int, caught_up: bool) -> dict[str, list[tuple[str, int]]]:
        received: dict[str, list[tuple[str, int]]] = {}
        for number in range(handlers):
            cursor, delivered = 0, []
            for _ in range(self.rnd.randint(0, 3 * len(self.commit_order) + 3)):
                if cursor < len(self.commit_order) and self.rnd.random() < 0.8:
                    delivered.append(self.commit_order[cursor])
                    cursor += 1
                elif cursor:
                    # A restart resumes from an older committed offset and redelivers from there.
                    cursor = self.rnd.randint(max(0, cursor - 5), cursor - 1)
            if caught_up:
                delivered += self.commit_order[cursor:]
            received[f"h{number}"] = delivered
        return received

    def merged_history(self) -> History:
        # Each client process writes its file; the test reads them back and merges.
        return History.merge(*(History.from_jsonl(client.to_jsonl()) for client in self.clients))

    def expected_unknown_written(self, operations: tuple[Operation, ...]) -> int:
        return sum(
            1
            for op in operations
            if op.kind == "command"
            and op.token in self.written_tokens
            and (
                op.outcome == "unknown"
                or (op.outcome == "failed" and op.status not in DEFINITELY_NOT_WRITTEN)
            )
        )


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(rnd=st.randoms(use_true_random=False), steps=st.integers(0, 80), caught_up=st.booleans())
def test_a_correct_system_passes(rnd: random.Random, steps: int, caught_up: bool) -> None:
    system = CorrectSystem(rnd)
    system.run(steps)
    history = system.merged_history()
    result = check(history, system.journal, deliveries=system.deliveries(2, caught_up), caught_up=caught_up)
    assert_valid(result)
    assert result.unknown_written == system.expected_unknown_written(history.operations)
    assert result.operations == result.succeeded + result.failed + result.unknown == len(history)


@dataclass
class Run:
    operations: list[Operation]
    journal: dict[str, list[tuple[int, str | None]]]
    deliveries: dict[str, list[tuple[str, int]]]
    zombie_writes_accepted: int = 0

    def replace_op(self, op: Operation, **changes: object) -> None:
        self.operations[self.operations.index(op)] = replace(op, **changes)  # type: ignore[arg-type]


def acknowledged_commands(run: Run) -> list[Operation]:
    return [op for op in run.operations if op.kind == "command" and op.outcome == "ok" and op.token]


def drop_an_acknowledged_event(run: Run, rnd: random.Random) -> None:
    victim = rnd.choice(acknowledged_commands(run))
    run.journal[victim.entity_id] = [e for e in run.journal[victim.entity_id] if e[1] != victim.token]


def store_a_revision_twice(run: Run, rnd: random.Random) -> None:
    entity = rnd.choice(sorted(run.journal))
    revision, token = rnd.choice(run.journal[entity])
    run.journal[entity].append((revision, rnd.choice((token, None, "intruder"))))


def remove_a_middle_revision(run: Run, rnd: random.Random) -> None:
    entity = rnd.choice([e for e, events in run.journal.items() if len(events) >= 2])
    missing = rnd.randrange(1, len(run.journal[entity]))
    run.journal[entity] = [e for e in run.journal[entity] if e[0] != missing]


def shift_a_reply(run: Run, rnd: random.Random) -> None:
    victim = rnd.choice(acknowledged_commands(run))
    assert victim.revision is not None
    run.replace_op(victim, revision=victim.revision + rnd.choice((-1, 1)))


def lower_a_read(run: Run, rnd: random.Random) -> None:
    ok = [op for op in run.operations if op.outcome == "ok" and op.end is not None]
    candidates = [
        (read, max(before))
        for read in ok
        if read.kind == "get_state"
        and (
            before := [
                op.revision or 0
                for op in ok
                if op.entity_id == read.entity_id and op.end is not None and op.end < read.start
            ]
        )
        and max(before) > 0
    ]
    read, seen = rnd.choice(candidates)
    run.replace_op(read, revision=rnd.randrange(0, seen))


def store_a_refused_token(run: Run, rnd: random.Random) -> None:
    refused = [
        op
        for op in run.operations
        if op.outcome == "failed" and op.status in DEFINITELY_NOT_WRITTEN and op.token is not None
    ]
    victim = rnd.choice(refused)
    events = run.journal.setdefault(victim.entity_id, [])
    events.append((len(events) + 1, victim.token))


def never_deliver_an_event(run: Run, rnd: random.Random) -> None:
    handler = rnd.choice(sorted(run.deliveries))
    lost = rnd.choice(run.deliveries[handler])
    run.deliveries[handler] = [d for d in run.deliveries[handler] if d != lost]


def deliver_out_of_order(run: Run, rnd: random.Random) -> None:
    handler = rnd.choice(sorted(run.deliveries))
    received = run.deliveries[handler]
    pairs = sorted({(e, r) for e, r in received if r > 1})
    entity, later = rnd.choice(pairs)
    early = received.pop(received.index((entity, later)))
    received.insert(received.index((entity, later - 1)), early)


def accept_a_zombie_write(run: Run, rnd: random.Random) -> None:
    run.zombie_writes_accepted = 1


MUTATIONS: dict[Callable[[Run, random.Random], None], set[ViolationKind]] = {
    drop_an_acknowledged_event: {ViolationKind.LOST},
    store_a_revision_twice: {ViolationKind.FORK},
    remove_a_middle_revision: {ViolationKind.GAP},
    # One step down may land on a revision another command was told: then it is a fork.
    shift_a_reply: {ViolationKind.CONTRADICTION, ViolationKind.FORK},
    lower_a_read: {ViolationKind.STALE_READ},
    store_a_refused_token: {ViolationKind.CONTRADICTION},
    never_deliver_an_event: {ViolationKind.SKIPPED},
    deliver_out_of_order: {ViolationKind.REORDERED},
    accept_a_zombie_write: {ViolationKind.ZOMBIE_WRITE},
}


@PROPERTY_SETTINGS
@given(
    rnd=st.randoms(use_true_random=False), steps=st.integers(0, 60), mutation=st.sampled_from(list(MUTATIONS))
)
def test_a_correct_run_broken_in_one_way_is_caught(
    rnd: random.Random, steps: int, mutation: Callable[[Run, random.Random], None]
) -> None:
    system = CorrectSystem(rnd)
    system.run(steps)
    run = Run(list(system.merged_history().operations), system.journal, system.deliveries(2, caught_up=True))
    assert check(run.operations, run.journal, deliveries=run.deliveries, caught_up=True).ok
    mutation(run, rnd)
    result = check(
        run.operations,
        run.journal,
        deliveries=run.deliveries,
        caught_up=True,
        zombie_writes_accepted=run.zombie_writes_accepted,
    )
    assert set(result.kinds()) & MUTATIONS[mutation], (mutation.__name__, [str(v) for v in result.violations])


def test_the_simulation_exercises_every_outcome() -> None:
    """Guards the properties above against a simulator that quietly stopped producing some cases."""
    outcomes: Counter[tuple[str, str]] = Counter()
    written_open = 0
    for seed in range(30):
        system = CorrectSystem(random.Random(seed))
        system.run(60)
        operations = system.merged_history().operations
        outcomes.update((op.kind, op.outcome) for op in operations)
        written_open += system.expected_unknown_written(operations)
    assert all(
        outcomes[(kind, outcome)] for kind in ("command", "get_state") for outcome in ("ok", "unknown")
    )
    assert outcomes[("command", "failed")]
    assert written_open
