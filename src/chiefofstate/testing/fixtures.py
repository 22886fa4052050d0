"""pytest fixtures that start an in-process node (library mode) around an application's write handler.

    # conftest.py
    from chiefofstate.testing import node_fixture
    from bank_service import Bank

    bank_node = node_fixture(Bank)                       # memory store
    bank_on_disk = node_fixture(Bank, store="sqlite")    # SQLite in the test's tmp_path
    with_balances = node_fixture(Bank, read_handlers={"balances": Balances})   # and a read side

    # test_bank.py
    async def test_open(bank_node):
        state, meta = await bank_node.process("acc-1", OpenAccount(owner="Ada"))

Each test gets a fresh node (and, with SQLite, a fresh file), stopped when the test ends. Needs pytest and
pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from chiefofstate.sdk.read import ReadHandler
from chiefofstate.sdk.write import WriteHandler
from chiefofstate.testing.in_process import InProcessNode, Store

S = TypeVar("S", bound=Message)


def node_fixture(
    handler_factory: Callable[[], WriteHandler[S]],
    *,
    store: Store = "memory",
    env: Mapping[str, str] | None = None,
    read_handlers: Mapping[str, Callable[[], ReadHandler[Any]]] | None = None,
) -> Any:
    """A pytest fixture yielding a started InProcessNode around `handler_factory()`.

    `store="sqlite"` puts the journal in the test's tmp_path; `store="postgres"` needs the COS_DB_*
    variables in `env`. `read_handlers` maps read side ids to factories of read handlers; the test
    reaches the instances through `node.read_handlers`."""
    import pytest_asyncio  # a test-time dependency, imported only by those who use the fixtures

    @pytest_asyncio.fixture
    async def in_process_node(tmp_path: Path) -> AsyncIterator[InProcessNode[S]]:
        node_env = dict(env or {})
        if store == "sqlite":
            node_env.setdefault("COS_DB_PATH", str(tmp_path / "cos.db"))
        readers = {read_side_id: make() for read_side_id, make in (read_handlers or {}).items()}
        async with InProcessNode(handler_factory(), store=store, env=node_env, read_handlers=readers) as node:
            yield node

    return in_process_node
