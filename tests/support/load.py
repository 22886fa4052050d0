"""A load generator for fault and cluster tests, run as its own process:

    python -m tests.support.load --targets 127.0.0.1:PORT[,...] --entities N --concurrency C \\
        --duration S --seed K --out history.jsonl

`--concurrency` workers each keep one call in flight against a target picked at random, on an account
picked at random among `--entities`: a GetState (`--read-share` of the calls), an OpenAccount for an
account not known to be open, otherwise a Deposit of one cent. Every command carries a token unique to
it, which the bank stores in its event (the OpenAccount's owner, the Deposit's reference), so that
`tests.support.journal_reader` can find it and `tests.support.history.check` can judge the run.

Each call is recorded in a `History` as ok, failed(status) or unknown (the client's deadline passed, or
the connection was lost with the call on it); the history is written as JSON lines to `--out` when the
run ends: after `--duration` seconds or `--max-ops` calls, or on SIGTERM/SIGINT. The last line on
stdout is a JSON summary. The exit code is 0 whenever the history was written, whatever the calls did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.support.history import History

if TYPE_CHECKING:
    # the stub's type for an aio channel exists only for type checkers
    from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceAsyncStub

# Reconnect fast: the default backoff grows to two minutes, longer than a whole scenario, so a node
# that comes back would go unused. Retries stay off so that every attempt is one recorded call.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
)

# Pause of a worker after a call that did not succeed: a node that is down refuses at once, and 32
# workers retrying in a tight loop would take the cores from the processes being tested.
_PAUSE_AFTER_FAILURE_S = 0.05

# Words of UNAVAILABLE details that come from the client's transport, not from a node's answer: the
# connection went while the call may have been on it.
_TRANSPORT_LOSS = (
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway",
    "stream removed",
    "end of stream",
    "keepalive",
)


def classify(error: BaseException) -> str | None:
    """The status to record a failed call with, or None for an unknown outcome."""
    if not isinstance(error, aio.AioRpcError):
        return None
    code = error.code()
    details = (error.details() or "").lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # The node's own deadline status says the command was abandoned before its append (docs/contract.md
        # §3.10); the client library's says only that no answer came in time.
        return "DEADLINE_EXCEEDED" if "nothing was written" in details else None
    if code == grpc.StatusCode.CANCELLED:
        return None
    if code == grpc.StatusCode.UNAVAILABLE and any(word in details for word in _TRANSPORT_LOSS):
        return None
    return str(code.name)


@dataclass(frozen=True)
class LoadConfig:
    targets: tuple[str, ...]
    entities: int
    concurrency: int
    duration_s: float
    seed: int
    out: Path
    max_ops: int = 200_000
    deadline_s: float = 5.0
    read_share: float = 0.25
    prefix: str = "acct"
    client: str = ""


class _Run:
    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.history = History(config.client or f"load-{os.getpid()}")
        self.entities = [f"{config.prefix}-{i}" for i in range(config.entities)]
        self.opened: set[str] = set()
        self.issued = 0
        self.stopping = asyncio.Event()
        # Made in `run`: gRPC's asyncio channels belong to the running loop.
        self.channels: dict[str, aio.Channel] = {}
        self.stubs: dict[str, ChiefOfStateServiceAsyncStub] = {}

    def token(self, worker: int, number: int) -> str:
        return f"{self.history.client}/w{worker}/{number}"

    async def worker(self, worker: int, ends_at: float) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + worker)
        number = 0
        while not self.stopping.is_set() and time.monotonic() < ends_at:
            if self.issued >= self.config.max_ops:
                return
            self.issued += 1
            number += 1
            target = rng.choice(self.config.targets)
            entity = rng.choice(self.entities)
            if rng.random() < self.config.read_share:
                succeeded = await self.get_state(target, entity)
            elif entity not in self.opened:
                succeeded = await self.open_account(target, entity, self.token(worker, number))
            else:
                succeeded = await self.deposit(target, entity, self.token(worker, number))
            if not succeeded:
                await asyncio.sleep(_PAUSE_AFTER_FAILURE_S)

    async def get_state(self, target: str, entity: str) -> bool:
        async with self.history.record("get_state", entity, node=target, classify=classify) as call:
            reply = await self.stubs[target].GetState(
                pb.GetStateRequest(entity_id=entity), timeout=self.config.deadline_s
            )
            call.ok(reply.meta.revision_number)
        return call.operation.outcome == "ok"

    async def open_account(self, target: str, entity: str, token: str) -> bool:
        async with self.history.record(
            "command", entity, node=target, token=token, classify=classify
        ) as call:
            reply = await self.stubs[target].ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity, command=bank.open_account(token, 0)),
                timeout=self.config.deadline_s,
            )
            call.ok(reply.meta.revision_number)
        if call.operation.outcome == "ok" or call.operation.status == "ALREADY_EXISTS":
            self.opened.add(entity)
        return call.operation.outcome == "ok"

    async def deposit(self, target: str, entity: str, token: str) -> bool:
        async with self.history.record(
            "command", entity, node=target, token=token, classify=classify
        ) as call:
            reply = await self.stubs[target].ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity, command=bank.deposit(1, reference=token)),
                timeout=self.config.deadline_s,
            )
            call.ok(reply.meta.revision_number)
        if call.operation.status == "NOT_FOUND":
            # The account's opening had an unknown outcome and was not written after all.
            self.opened.discard(entity)
        return call.operation.outcome == "ok"

    async def run(self, handle_signals: bool) -> History:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for signal_number in signals:
            loop.add_signal_handler(signal_number, self.stopping.set)
        for target in self.config.targets:
            channel = aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            self.channels[target] = channel
            self.stubs[target] = ChiefOfStateServiceStub(channel)
        ends_at = time.monotonic() + self.config.duration_s
        try:
            await asyncio.gather(*(self.worker(w, ends_at) for w in range(self.config.concurrency)))
        finally:
            for channel in self.channels.values():
                await channel.close()
            for signal_number in signals:
                loop.remove_signal_handler(signal_number)
        return self.history


def summary(history: History) -> dict[str, int]:
    counts: Counter[str] = Counter(op.outcome for op in history.operations)
    counts.update(f"status {op.status}" for op in history.operations if op.status is not None)
    return {"operations": len(history), **counts}


async def generate(config: LoadConfig, *, handle_signals: bool = False) -> History:
    """The load of `config` in the running loop; its history (not written anywhere). With
    `handle_signals`, SIGTERM and SIGINT end the run early instead of the process."""
    return await _Run(config).run(handle_signals)


def run_load(config: LoadConfig) -> History:
    """The whole run of the command line: the load, then its history written to `config.out`."""
    history = asyncio.run(generate(config, handle_signals=True))
    history.write_jsonl(config.out)
    return history


def parse_args(argv: Sequence[str] | None = None) -> LoadConfig:
    parser = argparse.ArgumentParser(prog="python -m tests.support.load", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", required=True, help="host:port of each node, comma-separated")
    parser.add_argument("--entities", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-ops", type=int, default=200_000)
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per call")
    parser.add_argument("--read-share", type=float, default=0.25)
    parser.add_argument("--prefix", default="acct", help="account ids are PREFIX-0 .. PREFIX-(N-1)")
    parser.add_argument("--client", default="", help="client name in the history (default load-PID)")
    args = parser.parse_args(argv)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets:
        parser.error("--targets names no target")
    if args.entities < 1 or args.concurrency < 1 or args.duration <= 0 or args.max_ops < 1:
        parser.error("--entities, --concurrency, --max-ops and --duration must be positive")
    if not 0 <= args.read_share <= 1:
        parser.error("--read-share must be between 0 and 1")
    return LoadConfig(
        targets=targets,
        entities=args.entities,
        concurrency=args.concurrency,
        duration_s=args.duration,
        seed=args.seed,
        out=args.out,
        max_ops=args.max_ops,
        deadline_s=args.deadline,
        read_share=args.read_share,
        prefix=args.prefix,
        client=args.client,
    )


def main(argv: Sequence[str] | None = None) -> int:
    history = run_load(parse_args(argv))
    print(json.dumps(summary(history), sort_keys=True), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# Driving it from a test


REPO_ROOT = Path(__file__).resolve().parents[2]


class LoadProcess:
    """`python -m tests.support.load` started from a test; `wait()` returns its history."""

    def __init__(self, config: LoadConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "tests.support.load",
            "--targets",
            ",".join(config.targets),
            "--entities",
            str(config.entities),
            "--concurrency",
            str(config.concurrency),
            "--duration",
            str(config.duration_s),
            "--seed",
            str(config.seed),
            "--out",
            str(config.out),
            "--max-ops",
            str(config.max_ops),
            "--deadline",
            str(config.deadline_s),
            "--read-share",
            str(config.read_share),
            "--prefix",
            config.prefix,
        ]
        if config.client:
            args += ["--client", config.client]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout_s: float | None = None) -> History:
        """Wait for the run to end by itself and read its history; `timeout_s` defaults to the run's
        duration plus room for the last calls' deadlines and a busy machine."""
        limit = timeout_s if timeout_s is not None else self.config.duration_s + self.config.deadline_s + 60
        try:
            code = self.popen.wait(limit)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        if code != 0:
            raise RuntimeError(f"load generator exited with {code}:\n{self.log_text()}")
        return History.read_jsonl(self.config.out)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
