"""The in-process node (library mode) against the `eventsourcing` library, on the same PostgreSQL server.

    pip install -e '.[bench]'        # eventsourcing and psycopg-pool: only this benchmark uses them
    python -m benchmarks.eventsourcing_compare [--seconds 5] [--where local|private]

Both save one deposit at a time to one of 32 accounts in turn, each save waiting for its commit:
`eventsourcing` as its applications do (an aggregate's method, then `app.save`), the node through
`InProcessNode.process` with the SDK bank handler called in process. The node is also measured with 32
commands in flight, its normal way of working (one writer per entity, commits grouped). Each system gets
its own fresh database on the same server. `eventsourcing` published 929 saves/s on PostgreSQL on this
class of machine; compare the numbers of one run here, the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank

from benchmarks.stores import postgres_store
from chiefofstate.testing import InProcessNode

ACCOUNTS = 32


def eventsourcing_rate(env: dict[str, str], seconds: float) -> float:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Account(Aggregate):  # type: ignore[misc]
        @event("Opened")  # type: ignore[untyped-decorator]
        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.balance = 0

        @event("Deposited")  # type: ignore[untyped-decorator]
        def deposit(self, amount: int) -> None:
            self.balance += amount

    os.environ.update(
        PERSISTENCE_MODULE="eventsourcing.postgres",
        POSTGRES_DBNAME=env["COS_DB_NAME"],
        POSTGRES_HOST=env["COS_DB_HOST"],
        POSTGRES_PORT=env["COS_DB_PORT"],
        POSTGRES_USER=env["COS_DB_USER"],
        POSTGRES_PASSWORD=env.get("COS_DB_PASSWORD", ""),
    )
    app: Any = Application()
    accounts = []
    for _ in range(ACCOUNTS):
        account = Account(owner="bench")
        app.save(account)
        accounts.append(account)
    saves = 0
    started = time.monotonic()
    stop_at = started + seconds
    while time.monotonic() < stop_at:
        account = accounts[saves % ACCOUNTS]
        account.deposit(1)
        app.save(account)
        saves += 1
    rate = saves / (time.monotonic() - started)
    app.close()
    return rate


async def node_rate(env: dict[str, str], seconds: float, in_flight: int) -> float:
    async with InProcessNode(Bank(), store="postgres", env=env) as node:
        entities = [f"acc-{index}" for index in range(ACCOUNTS)]
        for entity in entities:
            await node.process(entity, bank_pb2.OpenAccount(owner="bench"))
        done = 0
        started = time.monotonic()
        stop_at = started + seconds

        async def worker(mine: list[str]) -> None:
            nonlocal done
            turn = 0
            while time.monotonic() < stop_at:
                await node.process(mine[turn % len(mine)], bank_pb2.Deposit(amount=1))
                turn += 1
                done += 1

        groups = [entities[index::in_flight] for index in range(in_flight)]
        await asyncio.gather(*(worker(group) for group in groups))
        return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eventsourcing_compare")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--where", choices=("local", "private"), default="local")
    args = parser.parse_args()
    rows = []
    with postgres_store(args.where) as store:
        rows.append(("eventsourcing, 1 in flight", eventsourcing_rate(store.env, args.seconds)))
    for in_flight in (1, ACCOUNTS):
        with postgres_store(args.where) as store:
            rate = asyncio.run(node_rate(store.env, args.seconds, in_flight))
            rows.append((f"in-process node, {in_flight} in flight", rate))
    load = os.getloadavg()
    print(
        f"\nPostgreSQL ({args.where} server), {ACCOUNTS} accounts, {args.seconds:g} s each, "
        f"load average {load[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| system | saves/s |")
    print("| --- | --- |")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
