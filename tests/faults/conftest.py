"""The fault suite's verdicts: each scenario's table is printed with its test, and one table of every
scenario run in the session at the end of pytest's report."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.scenarios import Outcome
from tests.support.history import assert_valid, format_table

_OUTCOMES = pytest.StashKey[list[Outcome]]()

Judge = Callable[[Outcome], None]


@pytest.fixture
def judge(request: pytest.FixtureRequest) -> Judge:
    """Print a scenario's table, keep it for the session's table, and fail on any violation or on an
    expectation the checker cannot judge (no progress, no recovery)."""

    def judge_outcome(outcome: Outcome) -> None:
        request.config.stash.setdefault(_OUTCOMES, []).append(outcome)
        print(format_table([outcome.result]))
        for moment, what in outcome.faults:
            print(f"  {moment:.2f} {what}")
        assert not outcome.problems, f"{outcome.result.run}: " + "; ".join(outcome.problems)
        assert_valid(outcome.result)

    return judge_outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    outcomes = config.stash.get(_OUTCOMES, [])
    if outcomes:
        terminalreporter.section("fault suite")
        terminalreporter.write_line(format_table([o.result for o in outcomes]))
