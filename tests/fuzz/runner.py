"""Runs the fuzz cases against one node: used by the CI test (a few hundred cases) and by
`python -m tests.fuzz --cases N` (long runs)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from chiefofstate_examples.bank import client as bank
from hypothesis import HealthCheck, given, settings

from tests.fuzz.cases import (
    Ledger,
    check_config_on_a_node,
    check_env_config,
    check_grpc_case,
    check_http_case,
    check_yaml_config,
    env_configs,
    grpc_cases,
    http_cases,
    yaml_texts,
)
from tests.fuzz.target import FuzzTarget

_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Budget:
    """How many cases of each kind one run sends."""

    grpc: int
    http: int
    configs: int
    config_nodes: int

    @classmethod
    def scaled(cls, cases: int) -> Budget:
        # Most cases go to the node's two APIs; configs are cheap in process, costly as a node start.
        return cls(grpc=cases * 2 // 5, http=cases * 2 // 5, configs=cases // 5, config_nodes=cases // 500)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _run(examples: int, strategy: Any, check: Callable[[Any], None]) -> None:
    if examples <= 0:
        return
    _settings(examples)(given(strategy)(check))()


def run_api_cases(target: FuzzTarget, budget: Budget) -> Ledger:
    ledger = Ledger()
    options = [("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(target.grpc_address, options=options) as channel:
        # A valid command first, through the same checks: generated cases are random, and a run whose
        # cases all happened to be refused must still show that they reached a working node.
        check_grpc_case(channel, ledger, ("process", ("fuzz-canary", bank.open_account("Canary", 1), [])))
        _run(budget.grpc, grpc_cases(), lambda case: check_grpc_case(channel, ledger, case))
    with httpx.Client(base_url=target.http_url, timeout=30) as client:
        _run(budget.http, http_cases(), lambda case: check_http_case(client, ledger, case))
    assert target.node.alive(), "the node crashed"
    ledger.check_journal(target)
    problems = target.problems_in_log()
    assert not problems, "\n".join(problems[:5])
    return ledger


def run_config_cases(target: FuzzTarget, budget: Budget, folder: Path) -> None:
    _run(budget.configs, yaml_texts, check_yaml_config)
    _run(budget.configs, env_configs, check_env_config)
    runs = itertools.count()
    _run(
        budget.config_nodes,
        yaml_texts.flatmap(lambda text: env_configs.map(lambda env: (text, env))),
        lambda case: check_config_on_a_node(target, folder / f"config-{next(runs)}", case[0], case[1]),
    )
