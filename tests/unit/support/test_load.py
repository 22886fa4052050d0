"""The load generator: how calls are classified, that it keeps its calls in flight and records what a
correct node answers as a valid history, and that its process ends by itself."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from grpc import aio

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1 import service_pb2_grpc
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from tests.support.history import check
from tests.support.load import LoadConfig, LoadProcess, classify, generate, parse_args


def rpc_error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "details", "recorded"),
    [
        (grpc.StatusCode.UNAVAILABLE, "store unreachable", "UNAVAILABLE"),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; Connection refused",
            "UNAVAILABLE",
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", None),
        (grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer", None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline exceeded calling the handler; the command was abandoned and nothing was written",
            "DEADLINE_EXCEEDED",
        ),
        (grpc.StatusCode.CANCELLED, "Locally cancelled", None),
        (grpc.StatusCode.ALREADY_EXISTS, "account a already exists", "ALREADY_EXISTS"),
        (grpc.StatusCode.INTERNAL, "boom", "INTERNAL"),
    ],
)
def test_classify_keeps_a_status_only_when_the_node_answered(
    code: grpc.StatusCode, details: str, recorded: str | None
) -> None:
    assert classify(rpc_error(code, details)) == recorded


def test_classify_records_anything_else_as_unknown() -> None:
    assert classify(OSError("gone")) is None


def test_arguments_are_checked() -> None:
    config = parse_args(["--targets", "127.0.0.1:1, 127.0.0.1:2", "--duration", "3", "--out", "h.jsonl"])
    assert config.targets == ("127.0.0.1:1", "127.0.0.1:2")
    assert config.concurrency >= 32
    for bad in (
        ["--targets", ","],
        ["--targets", "x:1", "--concurrency", "0"],
        ["--targets", "x:1", "--read-share", "2"],
    ):
        with pytest.raises(SystemExit):
            parse_args([*bad, "--duration", "1", "--out", "h.jsonl"])


class FakeNode(service_pb2_grpc.ChiefOfStateServiceServicer):
    """A correct node in memory: the bank's open and deposit rules, one linear history per account."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[str]] = defaultdict(list)
        self.in_flight = 0
        self.most_in_flight = 0

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ProcessCommandResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # long enough for every worker's call to be in flight at once
            events = self.tokens[request.entity_id]
            opening, depositing = bank_pb2.OpenAccount(), bank_pb2.Deposit()
            if request.command.Unpack(opening):
                if events:
                    await context.abort(grpc.StatusCode.ALREADY_EXISTS, "open")
                events.append(opening.owner)
            elif request.command.Unpack(depositing):
                if not events:
                    await context.abort(grpc.StatusCode.NOT_FOUND, "not open")
                events.append(depositing.reference)
            return pb.ProcessCommandResponse(meta=MetaData(revision_number=len(events)))
        finally:
            self.in_flight -= 1

    async def GetState(
        self, request: pb.GetStateRequest, context: aio.ServicerContext[object, object]
    ) -> pb.GetStateResponse:
        events = self.tokens.get(request.entity_id)
        if not events:
            await context.abort(grpc.StatusCode.NOT_FOUND, "")
        return pb.GetStateResponse(meta=MetaData(revision_number=len(events or ())))


@pytest.fixture
async def fake_node() -> AsyncIterator[tuple[FakeNode, str]]:
    node = FakeNode()  # type: ignore[abstract]  # the subscription rpcs are never called here
    server = aio.server()
    service_pb2_grpc.add_ChiefOfStateServiceServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield node, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_keeps_every_worker_busy_and_records_a_valid_history(
    fake_node: tuple[FakeNode, str], tmp_path: Path
) -> None:
    node, target = fake_node
    config = LoadConfig(
        targets=(target,), entities=4, concurrency=32, duration_s=1.0, seed=3, out=tmp_path / "h.jsonl"
    )
    history = await generate(config)
    # Every worker keeps a call in flight; on a busy machine a few may be between calls at the peak.
    assert 24 <= node.most_in_flight <= 32
    journal = {entity: list(enumerate(tokens, 1)) for entity, tokens in node.tokens.items()}
    result = check(history, journal)
    assert result.ok, result.violations
    kinds = {op.kind for op in history.operations if op.outcome == "ok"}
    assert kinds == {"command", "get_state"}
    assert sum(len(tokens) for tokens in node.tokens.values()) > 4  # deposits after the openings


def test_the_process_ends_by_itself_and_writes_its_history(tmp_path: Path) -> None:
    # Nothing listens on port 1: every call fails at once, and the run still ends on time.
    config = LoadConfig(
        targets=("127.0.0.1:1",), entities=2, concurrency=4, duration_s=0.5, seed=1, out=tmp_path / "h.jsonl"
    )
    load = LoadProcess(config, tmp_path / "load.log")
    history = load.wait(timeout_s=60)
    assert len(history) > 0
    assert {(op.outcome, op.status) for op in history.operations} == {("failed", "UNAVAILABLE")}
    summary = json.loads(load.log_text().strip().splitlines()[-1])
    assert summary["operations"] == len(history)
