"""Commands per second of one SDK write handler (chiefofstate_examples.bank.handlers.Bank) behind a node,
called in process (library mode, chiefofstate.testing) against the same handler served over gRPC.

    python -m benchmarks.sdk_in_process [--store memory|sqlite] [--seconds 5] [--concurrency 32] [--rounds 3]

Both variants drive the node's command path from the benchmark's own event loop (no client RPC), so the
only difference is how the node reaches the handler: a Python call, or a gRPC call to the handler
running as its own process (`python -m chiefofstate_examples.bank.write_handler`), as it would in production.
Each round runs both variants, alternating which goes first; `concurrency` entities each receive Deposit
commands one after the other. The machine is shared, so compare the two numbers of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Bank

from chiefofstate.config.settings import load_settings
from chiefofstate.node.node import Node
from chiefofstate.sdk import client_rules as rules
from chiefofstate.sdk.local_node import free_ports
from chiefofstate.testing import InProcessNode

Process = Callable[[str, bank_pb2.Deposit | bank_pb2.OpenAccount], Awaitable[object]]
_PORTS = ("COS_PORT", "COS_MANAGEMENT_PORT", "COS_PROMETHEUS_PORT", "COS_CLUSTER_PORT")


def _store_env(store: str, folder: Path, name: str) -> dict[str, str]:
    return {"COS_DB_PATH": str(folder / f"{name}.db")} if store == "sqlite" else {}


@asynccontextmanager
async def in_process(store: str, folder: Path) -> AsyncIterator[Process]:
    env = _store_env(store, folder, "in-process")
    async with InProcessNode(Bank(), store="memory" if store == "memory" else "sqlite", env=env) as node:
        yield node.process


@asynccontextmanager
async def over_grpc(store: str, folder: Path) -> AsyncIterator[Process]:
    (handler_port,) = free_ports(1)
    log = (folder / "handler.log").open("ab")
    handler = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chiefofstate_examples.bank.write_handler",
        "--port",
        str(handler_port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in (folder / "handler.log").read_text():
            if handler.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the gRPC handler did not start: " + (folder / "handler.log").read_text())
            await asyncio.sleep(0.05)
        env = {
            "COS_ADDRESS": "127.0.0.1",
            "COS_WRITE_SIDE_HOST": "127.0.0.1",
            "COS_WRITE_SIDE_PORT": str(handler_port),
            **dict(zip(_PORTS, map(str, free_ports(len(_PORTS))), strict=True)),
            **_store_env(store, folder, "grpc"),
        }
        node = Node(load_settings(env), memory_store=store == "memory")
        await node.start()
        try:
            commands = node.commands
            assert commands is not None

            async def process(entity_id: str, command: bank_pb2.Deposit | bank_pb2.OpenAccount) -> object:
                request = rules.command_request(entity_id, command)
                return await commands.process_command(entity_id, request.command, (), None)

            yield process
        finally:
            await node.stop()
    finally:
        handler.terminate()
        await asyncio.wait_for(handler.wait(), 30)
        log.close()


async def measure(process: Process, seconds: float, concurrency: int, prefix: str) -> float:
    """Commands per second over `seconds`, after each entity is opened (not counted)."""
    entities = [f"{prefix}-{index}" for index in range(concurrency)]
    await asyncio.gather(*(process(entity, bank_pb2.OpenAccount(owner="bench")) for entity in entities))
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(entity: str) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await process(entity, bank_pb2.Deposit(amount=1))
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(entity) for entity in entities))
    return done / (time.monotonic() - started)


async def main_async(store: str, seconds: float, concurrency: int, rounds: int) -> None:
    results: dict[str, list[float]] = {"in process": [], "over gRPC": []}
    variants = {"in process": in_process, "over gRPC": over_grpc}
    with tempfile.TemporaryDirectory(prefix="cos-bench-sdk-") as folder:
        for round_number in range(rounds):
            order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
            for name in order:
                round_folder = Path(folder) / f"{name.replace(' ', '-')}-{round_number}"
                round_folder.mkdir()
                async with variants[name](store, round_folder) as process:
                    rate = await measure(process, seconds, concurrency, f"r{round_number}")
                results[name].append(rate)
                print(f"round {round_number + 1} {name}: {rate:,.0f} commands/s", flush=True)
    load = os.getloadavg()
    print()
    print(
        f"SDK handler, store {store}, {concurrency} entities, {seconds:g} s x {rounds} rounds, "
        f"load average {load[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| variant | median commands/s | rounds |")
    print("| --- | --- | --- |")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{rate:,.0f}' for rate in rates)} |")
    ratio = statistics.median(results["in process"]) / statistics.median(results["over gRPC"])
    print(f"\nin process / over gRPC: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_in_process")
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.store, args.seconds, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
