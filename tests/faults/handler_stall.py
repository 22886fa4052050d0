"""The write handler hung and slowed under load, with no restart of anything.

- `hung`: the handler process is stopped (SIGSTOP) for longer than the node's command time
  (`COS_COMMAND_HANDLER_TIMEOUT`), then continued (SIGCONT). Its socket stays open, so the node's calls
  are accepted by the kernel and never answered, which is what a deadlocked handler looks like.
- `slowed`: a proxy between the node and the handler delays every chunk by `SLOW_S` each way.

Expected (docs/contract.md §3.10, §3.11 and D4): each command either succeeds or fails with a status
the node sends within the command's time (`DEADLINE_EXCEEDED`, or `UNAVAILABLE`), and none runs into
the client's longer deadline; nothing is half-written (the checker); GetState keeps being served while
the handler is stopped, since reading a state needs no handler (a read of an account whose command is
stuck waits behind it, docs/contract.md §3.2, and gets an answer too); commands succeed again once the
handler answers.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.faults.disk import PROBE_ENTITY, open_probe_account
from tests.faults.scenarios import Outcome, Run, Settings, commands_without_answer, store
from tests.support.cluster import Node
from tests.support.history import History, Operation
from tests.support.postgres import PgServer
from tests.support.proxy import Proxy

DEFAULTS = Settings()
COMMAND_TIMEOUT_S = 2  # the node's COS_COMMAND_HANDLER_TIMEOUT, below the client's deadline
SLOW_S = 0.2
BUDGET_SLACK_S = 2.0
# Statuses the node may answer a command with while its handler is stopped or slow (docs/contract.md
# §3.10): its own deadline, the gRPC client's deadline on the handler call, an unreachable handler.
EXPECTED_FAILURES = {"DEADLINE_EXCEEDED", "UNAVAILABLE"}


def handler_stall(
    seed: int,
    workdir: Path,
    *,
    store_kind: str = "postgres",
    pg: PgServer | None = None,
    settings: Settings = DEFAULTS,
) -> Outcome:
    """SIGSTOP of the write handler past the command time then SIGCONT, and a slow link to it, in a
    seeded order under load."""
    with Run(f"handler-stall/{store_kind}", seed, workdir, settings) as run:
        handler = run.handler()
        link = run.stack.enter_context(Proxy("127.0.0.1", handler.port, name="write-handler"))
        store_env = run.stack.enter_context(store(store_kind, workdir, pg))
        node = run.node(
            handler,
            store_env,
            COS_WRITE_SIDE_PORT=str(link.port),
            COS_COMMAND_HANDLER_TIMEOUT=str(COMMAND_TIMEOUT_S),
        )
        open_probe_account(node)
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()
        kinds = ["hung", "slowed"]
        run.rng.shuffle(kinds)
        windows: dict[str, list[tuple[float, float]]] = {"hung": [], "slowed": []}
        current: list[str] = []

        def fault() -> None:
            kind = kinds[sum(len(w) for w in windows.values()) % len(kinds)]
            current[:] = [kind]
            if kind == "hung":
                handler.pause()
                windows[kind].append((run.note("SIGSTOP write handler"), float("inf")))
                # Once commands are stuck in the stopped handler, an account nobody writes is still read.
                time.sleep(0.5)
                if (status := probe_state(node)) != "OK":
                    run.problems.append(
                        f"GetState of an idle account gave {status} while the handler was stopped"
                    )
                run.note(f"probe GetState while the handler is stopped: {status}")
            else:
                link.delay(SLOW_S, "both")
                windows[kind].append(
                    (run.note(f"write handler link delayed {SLOW_S:g}s each way"), float("inf"))
                )

        def repair() -> None:
            kind = current[0]
            if kind == "hung":
                handler.resume()
            else:
                link.passthrough()
            windows[kind][-1] = (windows[kind][-1][0], run.note(f"repaired: write handler no longer {kind}"))

        # A stop outlasts the node's command time, so commands do reach that time.
        hold_s = (COMMAND_TIMEOUT_S + 0.5, COMMAND_TIMEOUT_S + 1.5)
        run.inject(main, started, fault, repair, hold_s, pause_s=(0.5, 1.5), at_least=len(kinds))
        outcome = run.judge(node, store_env, main)
        history = History.read_jsonl(main.config.out)
        every = windows["hung"] + windows["slowed"]
        outcome.problems += commands_without_answer(main, every)
        outcome.problems += _unexpected_failures(history.operations, every)
        outcome.problems += _over_budget(history.operations, every)
        outcome.problems += _reads_while_hung(history.operations, windows["hung"])
        if node.starts != 1 or not node.alive():
            outcome.problems.append(f"the node was restarted or died ({node.starts} starts)")
        return outcome


def _during(op: Operation, windows: list[tuple[float, float]]) -> bool:
    return any(went <= op.start <= back for went, back in windows)


def _unexpected_failures(operations: tuple[Operation, ...], windows: list[tuple[float, float]]) -> list[str]:
    """Commands refused during a stall with a status the contract does not give a stalled handler."""
    odd = [
        op
        for op in operations
        if op.kind == "command"
        and op.outcome == "failed"
        and _during(op, windows)
        and op.status not in EXPECTED_FAILURES | {"ALREADY_EXISTS", "NOT_FOUND", "FAILED_PRECONDITION"}
    ]
    if not odd:
        return []
    shown = ", ".join(f"{op.op_id} {op.status}" for op in odd[:5])
    return [f"{len(odd)} command(s) failed during a stalled handler with an unexpected status: {shown}"]


def _over_budget(operations: tuple[Operation, ...], windows: list[tuple[float, float]]) -> list[str]:
    """Commands of a stall that did not succeed must have been answered around the node's command time
    (BUDGET_SLACK_S above it for a busy machine), not when the client gave up."""
    late = [
        op
        for op in operations
        if op.kind == "command"
        and op.outcome != "ok"
        and _during(op, windows)
        and (op.end is None or op.end - op.start > COMMAND_TIMEOUT_S + BUDGET_SLACK_S)
    ]
    if not late:
        return []
    shown = ", ".join(f"{op.op_id} ({(op.end or op.start) - op.start:.1f}s)" for op in late[:5])
    return [f"{len(late)} command(s) of a stall answered past the command time: {shown}"]


def _reads_while_hung(operations: tuple[Operation, ...], hung: list[tuple[float, float]]) -> list[str]:
    """Load reads sent while the handler was stopped must each get an answer from the node. A read of an
    account whose command is stuck in the handler waits behind it (docs/contract.md §3.2) and may get
    the node's DEADLINE_EXCEEDED; the probe reads show that the other accounts are served."""
    reads = [op for op in operations if op.kind == "get_state" and _during(op, hung)]
    unanswered = [op for op in reads if op.outcome == "unknown"]
    odd = [
        op for op in reads if op.outcome == "failed" and op.status not in {"NOT_FOUND", "DEADLINE_EXCEEDED"}
    ]
    problems = []
    if unanswered:
        shown = ", ".join(op.op_id for op in unanswered[:5])
        problems.append(
            f"{len(unanswered)} of {len(reads)} reads got no answer while the handler was stopped: {shown}"
        )
    if odd:
        shown = ", ".join(f"{op.op_id} {op.status}" for op in odd[:5])
        problems.append(f"{len(odd)} of {len(reads)} reads failed while the handler was stopped: {shown}")
    return problems


def probe_state(node: Node, timeout_s: float = 10.0) -> str:
    """GetState of the probe account over a fresh channel: "OK" or the status's name."""
    with grpc.insecure_channel(node.target) as channel:
        stub = ChiefOfStateServiceStub(channel)
        try:
            stub.GetState(pb.GetStateRequest(entity_id=PROBE_ENTITY), timeout=timeout_s)
        except grpc.RpcError as error:
            return str(error.code().name)
    return "OK"
