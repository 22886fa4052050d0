"""Library mode on PostgreSQL: an in-process node around the SDK bank handler stores its journal in a
real database, which a second node reads back."""

from __future__ import annotations

import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank

from chiefofstate.testing import InProcessNode
from tests.integration.conftest import postgres_env
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def test_the_journal_is_kept_in_postgres(pg_database: tuple[PgServer, str]) -> None:
    server, database = pg_database
    env = postgres_env(server, database)
    async with InProcessNode(Bank(), store="postgres", env=env) as first:
        await first.process("acc-1", bank_pb2.OpenAccount(owner="Ada", initial_balance=10))
        state, meta = await first.process("acc-1", bank_pb2.Deposit(amount=5))
        assert (state.balance, meta.revision_number) == (15, 2)
    async with InProcessNode(Bank(), store="postgres", env=env) as second:
        found = await second.get("acc-1")
    assert found is not None and (found[0].balance, found[1].revision_number) == (15, 2)
