"""The SQLite node's disk full under load: a real small file system (a tmpfs of `DISK_SIZE`) holds the
store, and each fault fills it to the last byte with a ballast file; each repair deletes the ballast.

Mounting a tmpfs needs root (CAP_SYS_ADMIN), which CI and this project's machines have; a run
without it fails with a message saying so. A real file system is used rather than an injected error
(an LD_PRELOAD shim, a FUSE file system, a SQLite VFS) so that what SQLite meets is what it meets in
production: ENOSPC wherever its write-ahead log or its main file must grow.

Expected (docs/contract.md §3.10): commands fail with `UNAVAILABLE` naming the full disk, and get that
answer rather than hang; reads keep being served; nothing acknowledged is lost and nothing is
half-written (the checker, and SQLite's own integrity check); once the ballast is gone, writes
succeed again in the same node process, without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from chiefofstate_examples.bank import client as bank

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.faults.scenarios import Outcome, Run, Settings
from tests.support.cluster import Node
from tests.support.history import History

DISK_SIZE = "64m"
DEFAULTS = Settings()
PROBE_ENTITY = "disk-probe"  # outside the load's prefix, so the checker never sees its events
# How long the node may keep accepting writes on a full disk: an append that fits in space SQLite
# already holds (its write-ahead log is reused after a checkpoint) needs no new block.
FILL_PATIENCE_S = 10.0
RECOVERY_PATIENCE_S = 30.0
_BALLAST_CHUNKS = (1 << 20, 1 << 12, 1)


@contextlib.contextmanager
def small_file_system(where: Path, size: str = DISK_SIZE) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `where` (created), unmounted afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "the disk-full scenario mounts a small tmpfs and needs root (CAP_SYS_ADMIN); "
            "run it as root, as CI does"
        )
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(ballast: Path) -> int:
    """Write `ballast` until the file system refuses another byte; the bytes written."""
    written = 0
    with ballast.open("ab", buffering=0) as out:
        for chunk in _BALLAST_CHUNKS:
            block = b"\0" * chunk
            while True:
                try:
                    written += out.write(block) or 0
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    return written


def deposit_status(node: Node, timeout_s: float = 10.0) -> tuple[grpc.StatusCode, str]:
    """One deposit on the probe account over a fresh channel: its status and details."""
    with grpc.insecure_channel(node.target) as channel:
        stub = ChiefOfStateServiceStub(channel)
        request = pb.ProcessCommandRequest(
            entity_id=PROBE_ENTITY, command=bank.deposit(1, reference=f"probe-{uuid.uuid4().hex}")
        )
        try:
            stub.ProcessCommand(request, timeout=timeout_s)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def open_probe_account(node: Node) -> None:
    with grpc.insecure_channel(node.target) as channel:
        stub = ChiefOfStateServiceStub(channel)
        request = pb.ProcessCommandRequest(entity_id=PROBE_ENTITY, command=bank.open_account("probe", 0))
        stub.ProcessCommand(request, timeout=30)


def disk_full(seed: int, workdir: Path, *, settings: Settings = DEFAULTS) -> Outcome:
    """The SQLite store's file system filled to the last byte and freed again, several times, under
    load; the node is never restarted."""
    with Run("disk-full/sqlite", seed, workdir, settings) as run:
        disk = run.stack.enter_context(small_file_system(workdir / "disk"))
        store_env = {"COS_DB_PATH": str(disk / "cos.db")}
        handler = run.handler()
        node = run.node(handler, store_env)
        open_probe_account(node)
        ballast = disk / "ballast"
        full: list[tuple[float, float]] = []  # (filled, freed) monotonic moments
        refusals: list[tuple[grpc.StatusCode, str]] = []
        main = run.load(node, "main", settings.duration_s)
        started = time.monotonic()

        def fault() -> None:
            size = fill(ballast)
            full.append((run.note(f"disk full (ballast of {size} bytes)"), float("inf")))
            deadline = time.monotonic() + FILL_PATIENCE_S
            while time.monotonic() < deadline:
                code, details = deposit_status(node)
                if code != grpc.StatusCode.OK:
                    refusals.append((code, details))
                    run.note(f"probe deposit refused: {code.name} {details[:120]}")
                    return
                fill(ballast)  # the accepted deposit may have taken space the ballast left
            run.problems.append(f"deposits still succeeded {FILL_PATIENCE_S:.0f}s after the disk filled")

        def repair() -> None:
            ballast.unlink()
            full[-1] = (full[-1][0], run.note("repaired: ballast deleted"))
            deadline = time.monotonic() + RECOVERY_PATIENCE_S
            while (code := deposit_status(node)[0]) != grpc.StatusCode.OK:
                if time.monotonic() > deadline:
                    run.problems.append(
                        f"writes still fail ({code.name}) {RECOVERY_PATIENCE_S:.0f}s after space was freed"
                    )
                    return
                time.sleep(0.2)
            run.note("probe deposit accepted again")

        run.inject(main, started, fault, repair, hold_s=(1.0, 2.5))
        outcome = run.judge(node, store_env, main)
        outcome.problems += _unclear_refusals(refusals)
        outcome.problems += _calls_while_full(History.read_jsonl(main.config.out), full)
        outcome.problems += _integrity(disk / "cos.db")
        if node.starts != 1 or not node.alive():
            outcome.problems.append(f"the node was restarted or died ({node.starts} starts)")
        return outcome


def _unclear_refusals(refusals: list[tuple[grpc.StatusCode, str]]) -> list[str]:
    """Each probe refused on a full disk must be UNAVAILABLE and say that the disk is full."""
    return [
        f"a deposit on a full disk was refused with {code.name}: {details!r}"
        for code, details in refusals
        if code != grpc.StatusCode.UNAVAILABLE or "full" not in details.lower()
    ]


def _calls_while_full(history: History, full: list[tuple[float, float]]) -> list[str]:
    """Reads started while the disk was full must be served; commands must get an answer (a refusal is
    expected), not run into the client's deadline."""
    during = [op for op in history.operations if any(a <= op.start <= b for a, b in full)]
    reads = [op for op in during if op.kind == "get_state"]
    problems = []
    unserved = [op for op in reads if not (op.outcome == "ok" or op.status == "NOT_FOUND")]
    if unserved:
        shown = ", ".join(f"{op.op_id} {op.status or 'no answer'}" for op in unserved[:5])
        problems.append(f"{len(unserved)} of {len(reads)} reads failed while the disk was full: {shown}")
    if not reads:
        problems.append("no read was sent while the disk was full")
    hung = [op for op in during if op.kind == "command" and op.outcome == "unknown"]
    if hung:
        shown = ", ".join(op.op_id for op in hung[:5])
        problems.append(f"{len(hung)} command(s) sent while the disk was full got no answer: {shown}")
    return problems


def _integrity(path: Path) -> list[str]:
    connection = sqlite3.connect(path, timeout=30)
    try:
        verdict = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    finally:
        connection.close()
    return [] if verdict == ["ok"] else [f"SQLite integrity check: {'; '.join(verdict[:5])}"]
