"""The read handler of a running read side killed, hung and slowed under load; the node is never
restarted.

One read side (`bank`) delivers every event to the example bank read handler, which logs each delivery
(tests/support/readside_processes.py). The node reaches it through a proxy. The faults, cycled in a
seeded order:

- `killed`: kill -9 of the read handler, started again on its port after the hold.
- `hung`: SIGSTOP of the read handler, SIGCONT after the hold: deliveries run into the read side's
  `timeout` and fail.
- `slowed`: the proxy delays every chunk by `SLOW_S` each way.

The read side's policy is `REPLAY_STOP` with retries spaced so that they outlast a fault
(docs/contract.md §5.5: a failed event is tried 6 times, `COS_READ_SIDE_REPLAY_DELAY` apart, and only
then halts the projection). Expected: once the fault ends the read side catches up with every event of
the journal, each entity's events first received in revision order, nothing skipped (the checker's
read-side checks; redeliveries are counted, not violations), and no projection halted.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from chiefofstate.cli.processes import Process, start_bank_read_handler
from tests.faults.scenarios import NOTHING_WRITTEN, Outcome, Run, Settings, store
from tests.support.cluster import Node
from tests.support.history import History, JournalEvents, check
from tests.support.journal_reader import read_journal
from tests.support.postgres import PgServer
from tests.support.proxy import Proxy
from tests.support.readside_processes import FAST, DeliveryLog, read_side

DEFAULTS = Settings()
READ_SIDE = "bank"
SLOW_S = 0.05
DELIVERY_TIMEOUT_MS = 2000
# Six attempts 1 s apart, each up to the 2 s timeout: at least 6 s of patience, above any hold below.
REPLAY_DELAY = "1s"
HOLD_S = (2.0, 3.5)
CATCH_UP_S = 90.0
# Fewer workers than the write-side scenarios: every event goes through the read handler one at a time
# per shard, and the backlog a slow spell leaves must drain within CATCH_UP_S on a busy machine.
MAX_CONCURRENCY = 8


class ReadHandler:
    """The example bank read handler on a fixed port, killed, stopped and started again."""

    def __init__(self, logs: Path, deliveries: DeliveryLog) -> None:
        self.logs = logs
        self.deliveries = deliveries
        self.starts = 0
        self.process: Process | None = None
        self.port = 0

    def start(self) -> None:
        for attempt in range(5):
            self.starts += 1
            try:
                self.process = start_bank_read_handler(
                    self.logs,
                    self.port or None,
                    deliveries=self.deliveries.path,
                    name=f"read-handler.{self.starts}",
                )
                self.port = self.process.ports["read_side"]
                return
            except RuntimeError as error:
                if attempt == 4 or "address already in use" not in str(error).lower():
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def signal(self, number: signal.Signals) -> None:
        if self.process is not None:
            self.process.popen.send_signal(number)


def read_handler_faults(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = DEFAULTS,
) -> Outcome:
    """kill -9, SIGSTOP/SIGCONT and a slow link of the read handler under load, in a seeded order."""
    settings = dataclasses.replace(settings, concurrency=min(settings.concurrency, MAX_CONCURRENCY))
    with Run(f"read-handler/{store_kind}", seed, workdir, settings) as run:
        handler = run.handler()
        deliveries = DeliveryLog(workdir / "deliveries.jsonl")
        reader = ReadHandler(run.logs, deliveries)
        reader.start()
        run.stack.callback(reader.kill)
        link = run.stack.enter_context(Proxy("127.0.0.1", reader.port, name="read-handler"))
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        node = run.node(
            handler,
            store_env,
            extra_env={
                **FAST,
                "COS_READ_SIDE_REPLAY_DELAY": REPLAY_DELAY,
                **read_side(
                    READ_SIDE,
                    link.port,
                    TIMEOUT=str(DELIVERY_TIMEOUT_MS),
                    FAILURE_POLICY="REPLAY_STOP",
                ),
            },
        )
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()
        kinds = ["killed", "hung", "slowed"]
        run.rng.shuffle(kinds)
        done: list[str] = []

        def fault() -> None:
            kind = kinds[len(done) % len(kinds)]
            done.append(kind)
            if kind == "killed":
                reader.kill()
                run.note("kill -9 read handler")
            elif kind == "hung":
                reader.signal(signal.SIGSTOP)
                run.note("SIGSTOP read handler")
            else:
                link.delay(SLOW_S, "both")
                run.note(f"read handler link delayed {SLOW_S:g}s each way")

        def repair() -> None:
            kind = done[-1]
            if kind == "killed":
                reader.start()
            elif kind == "hung":
                reader.signal(signal.SIGCONT)
            else:
                link.passthrough()
            run.note(f"repaired: read handler no longer {kind}")

        run.inject(main, started, fault, repair, HOLD_S, pause_s=(0.5, 1.5), at_least=len(kinds))
        history = main.wait()
        after = run.load(node, "after", settings.after_s).wait()
        journal = read_journal(store_env, prefix=run.prefix)
        received = caught_up(deliveries, journal)
        run.note(
            f"read side caught up: {len(received)} deliveries of {sum(map(len, journal.values()))} events"
        )
        result = check(
            History.merge(history, after),
            journal,
            run=f"{run.name} seed {seed}",
            deliveries={READ_SIDE: received},
            caught_up=True,
            nothing_written_statuses=NOTHING_WRITTEN,
        )
        run.expect_progress(history.operations, after.operations)
        metrics = _metrics_text(node)
        halted = _labelled_sum(metrics, "cos_read_side_projections", 'state="halted"')
        skipped = _labelled_sum(metrics, "cos_read_side_events_skipped", f'read_side="{READ_SIDE}"')
        if not _labelled_sum(metrics, "cos_read_side_projections", 'state="running"'):
            run.problems.append("no projection of the read side runs on the node after the faults")
        if halted or skipped:
            run.problems.append(f"{halted:g} projection(s) halted, {skipped:g} event(s) skipped by the node")
        return Outcome(result, run.problems, run.faults, workdir)


def caught_up(deliveries: DeliveryLog, journal: Mapping[str, JournalEvents]) -> list[tuple[str, int]]:
    """(entity, revision) of the successful deliveries in the order received, once every event of the
    journal was received (or CATCH_UP_S passed: the checker then reports what was skipped)."""
    wanted = {(entity, revision) for entity, events in journal.items() for revision, _ in events}
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        received = [
            (d.entity_id, d.revision)
            for d in deliveries.all(READ_SIDE)
            if d.entity_id in journal and d.outcome == "ok"
        ]
        if wanted <= set(received) or time.monotonic() > deadline:
            return received
        time.sleep(0.2)


def _metrics_text(node: Node) -> str:
    url = f"http://127.0.0.1:{node.env['COS_PROMETHEUS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _labelled_sum(metrics: str, name: str, label: str) -> float:
    """The sum of the samples of `name` whose labels include `label` (e.g. `state="halted"`)."""
    pattern = rf"^{re.escape(name)}(?:_total)?\{{([^}}]*)\}} (\S+)$"
    return sum(
        float(value) for labels, value in re.findall(pattern, metrics, re.MULTILINE) if label in labels
    )
