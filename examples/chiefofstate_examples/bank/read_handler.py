"""The bank's read handler (`Balances`, handlers.py) as a program:

    python -m chiefofstate_examples.bank.read_handler [--host 127.0.0.1] [--port 50052] [--http] [--log PATH]


By default it serves `chief_of_state.v1.ReadSideHandlerService` over gRPC (with health and reflection);
with `--http`, upstream's HTTP read-side protocol, `POST /v1/readside/handle` (docs/contract.md §5.3).
Once it accepts calls it prints one line, `bank read handler (grpc|http) listening on HOST:PORT`; SIGTERM
or SIGINT stops it.
Point a read side at it, e.g.:

    COS_READ_SIDE_ENABLED=true
    COS_READ_SIDE_CONFIG__HOST__balances=127.0.0.1
    COS_READ_SIDE_CONFIG__PORT__balances=50052

`--log PATH` appends one JSON line per delivery to PATH — read side, entity, revision, event type, the
`x-cos-*` and `traceparent` headers, outcome, balance, the time received and the event's revision date —
so tests can check every delivery and its order.

TEST HOOKS — fault injection for Chief of State's own tests, all off unless set; never use them in a
deployment. Each takes a comma-separated list of `[read_side_id/]entity_id[@revision]` (`*` matches any
entity):

* `BANK_READ_FAIL` — answer with an error (gRPC `INTERNAL`, HTTP 500);
* `BANK_READ_REFUSE` — answer `successful=false`;
* `BANK_READ_HANG` — never answer (the node's timeout must end the call);
* `BANK_READ_HOLD` — never answer the first delivery of the event (logged as `held`), answer the later
  ones normally: a pause point inside the read handler, to kill the node while a delivery is in flight;
* `BANK_READ_DELAY_MS=N` — every call waits N milliseconds before answering (a slow read handler).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import grpc
from google.protobuf.message import Message

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import Rejected, call_headers, handles, serve
from chiefofstate_examples.bank.gen.bank.v1.bank_pb2 import (
    AccountOpened,
    BankAccount,
    FeeCharged,
    MoneyDeposited,
    MoneyWithdrawn,
)
from chiefofstate_examples.bank.handlers import Account, Balances

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50052
HANG_LIMIT_S: Final = 3600.0


@dataclass(frozen=True)
class Selector:
    """Which deliveries a hook applies to: `[read_side_id/]entity_id[@revision]`."""

    read_side_id: str | None
    entity_id: str
    revision: int | None

    @classmethod
    def parse(cls, text: str) -> Selector:
        read_side_id, _, rest = text.rpartition("/")
        entity_id, _, revision = rest.partition("@")
        return cls(read_side_id or None, entity_id, int(revision) if revision else None)

    def matches(self, read_side_id: str, entity_id: str, revision: int) -> bool:
        return (
            (self.read_side_id is None or self.read_side_id == read_side_id)
            and self.entity_id in ("*", entity_id)
            and (self.revision is None or self.revision == revision)
        )


def _selectors(text: str) -> tuple[Selector, ...]:
    return tuple(Selector.parse(part.strip()) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class ReadFaults:
    """TEST HOOKS (see the module docstring). The default injects none."""

    fail: tuple[Selector, ...] = ()
    refuse: tuple[Selector, ...] = ()
    hang: tuple[Selector, ...] = ()
    hold: tuple[Selector, ...] = ()
    delay_ms: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ReadFaults:
        env = os.environ if environ is None else environ
        raw_delay = env.get("BANK_READ_DELAY_MS", "").strip() or "0"
        if not raw_delay.isdigit():
            raise ValueError(f"BANK_READ_DELAY_MS must be a whole number of milliseconds (got {raw_delay!r})")
        return cls(
            fail=_selectors(env.get("BANK_READ_FAIL", "")),
            refuse=_selectors(env.get("BANK_READ_REFUSE", "")),
            hang=_selectors(env.get("BANK_READ_HANG", "")),
            hold=_selectors(env.get("BANK_READ_HOLD", "")),
            delay_ms=int(raw_delay),
        )

    def holds(self, read_side_id: str, entity_id: str, revision: int) -> bool:
        return any(selector.matches(read_side_id, entity_id, revision) for selector in self.hold)

    def outcome(self, read_side_id: str, entity_id: str, revision: int) -> str:
        """`ok`, `failed`, `refused` or `hang` for one delivery."""
        for name, selectors in (("hang", self.hang), ("failed", self.fail), ("refused", self.refuse)):
            if any(selector.matches(read_side_id, entity_id, revision) for selector in selectors):
                return name
        return "ok"


class RecordedBalances(Balances):
    """`Balances` with the test hooks and the delivery log. Its method takes the read side id, as any
    `@handles` method may: one handler process serves several read sides and tells them apart."""

    def __init__(self, faults: ReadFaults | None = None, log: TextIO | None = None) -> None:
        super().__init__()
        self.faults = ReadFaults() if faults is None else faults
        self._log = log
        self._held: set[tuple[str, str, int]] = set()  # deliveries whose first attempt was held

    @handles(AccountOpened, MoneyDeposited, MoneyWithdrawn, FeeCharged)
    async def record_delivery(
        self, event: Message, state: BankAccount, meta: MetaData, read_side_id: str
    ) -> bool:
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        delivery = (read_side_id, meta.entity_id, meta.revision_number)
        outcome = self.faults.outcome(*delivery)
        if outcome == "ok" and delivery not in self._held and self.faults.holds(*delivery):
            self._held.add(delivery)
            outcome = "held"
        account = self.apply(meta.entity_id, meta.revision_number, state) if outcome == "ok" else None
        self._record(read_side_id, event, meta, outcome, account)
        if outcome in ("hang", "held"):
            await asyncio.sleep(HANG_LIMIT_S)  # the node's timeout (or its death) must come first
        if outcome == "failed":
            raise Rejected(grpc.StatusCode.INTERNAL, "test hook: BANK_READ_FAIL")
        return outcome == "ok"

    def _record(
        self, read_side_id: str, event: Message, meta: MetaData, outcome: str, account: Account | None
    ) -> None:
        if self._log is None:
            return
        headers = call_headers()

        def header(name: str) -> str:
            value = headers.get(name, "")
            return value if isinstance(value, str) else value.hex()

        line = {
            "read_side_id": read_side_id,
            "entity_id": meta.entity_id,
            "revision": meta.revision_number,
            "x_cos_entity_id": header("x-cos-entity-id"),
            "x_cos_event_tag": header("x-cos-event-tag"),
            "event_type": f"type.googleapis.com/{event.DESCRIPTOR.full_name}",
            "balance": account.balance if account else None,
            "outcome": outcome,
            "received_at": time.time(),
            "revision_date": meta.revision_date.seconds + meta.revision_date.nanos / 1e9,
            "traceparent": header("traceparent"),  # the W3C trace context the node sent, when tracing is on
        }
        # One short line per delivery; the file is opened line-buffered, so this is one write() call.
        self._log.write(json.dumps(line) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.read_handler`; returns the exit code:
    0 after SIGTERM/SIGINT, 1 when the address cannot be bound, 2 for a bad test-hook variable."""
    parser = argparse.ArgumentParser(
        prog="python -m chiefofstate_examples.bank.read_handler",
        description="Bank example read handler for Chief of State (a projection of balances).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port, 0 = any free one (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--http", action="store_true", help="serve the HTTP read-side protocol instead of gRPC"
    )
    parser.add_argument("--log", default="", help="append one JSON line per delivery to this file")
    args = parser.parse_args(argv)
    try:
        faults = ReadFaults.from_environment()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as files:
        log = (
            files.enter_context(Path(args.log).open("a", buffering=1, encoding="utf-8")) if args.log else None
        )
        try:
            serve(
                RecordedBalances(faults, log),
                host=args.host,
                port=args.port,
                protocol="http" if args.http else "grpc",
                name="bank read handler",
            )
        except SystemExit as exit_:  # serve exits 1, with the reason on stderr, when it cannot bind
            return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
