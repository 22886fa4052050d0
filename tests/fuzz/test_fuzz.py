"""Fuzzing of every external input against a real node (docs/testing.md, "Fuzzing"): a few hundred
cases here; `python -m tests.fuzz --cases N` for long runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.cases import check_config_on_a_node
from tests.fuzz.runner import Budget, run_api_cases, run_config_cases
from tests.fuzz.target import FuzzTarget, running_target

pytestmark = pytest.mark.integration

# COS_FUZZ_CASES overrides the CI budget (e.g. 10000 for a long run under pytest).
CASES = int(os.environ.get("COS_FUZZ_CASES", "300"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with running_target(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def test_grpc_and_http_inputs_get_documented_answers_and_refused_commands_write_nothing(
    target: FuzzTarget,
) -> None:
    ledger = run_api_cases(target, Budget.scaled(CASES))
    assert ledger.cases > 0 and ledger.revisions, "no command was acknowledged: the cases missed the node"


def test_read_side_configs_are_accepted_or_refused_with_one_line(target: FuzzTarget, tmp_path: Path) -> None:
    # Parsed in process here; a node start costs seconds, so CI starts one node on a broken definition
    # and long runs start one per 500 cases on generated ones.
    run_config_cases(target, Budget.scaled(CASES), tmp_path)
    check_config_on_a_node(
        target, tmp_path / "broken", "readSideId: [1]\nport: x\n", {"COS_READ_SIDE_CONFIG__PORT__r": "-1"}
    )
