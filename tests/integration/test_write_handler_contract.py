"""What the write handler receives: prior state, metas, propagated headers (docs/contract.md §3.3–3.9).

Run against both variants of the bank handler (gRPC and HTTP write-side protocols)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process, start_bank_write_handler
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory, both_write_protocols

pytestmark = [pytest.mark.integration, both_write_protocols]


@pytest.fixture
def logging_handler(tmp_path_factory: pytest.TempPathFactory, write_protocol: str) -> Iterator[Process]:
    handler = start_bank_write_handler(
        tmp_path_factory.mktemp("logged"), extra_env={"BANK_HANDLER_LOG_CALLS": "1"}, protocol=write_protocol
    )
    yield handler
    handler.stop()


def calls(handler: Process) -> list[dict[str, Any]]:
    return [json.loads(line) for line in handler.log_text().splitlines() if line.startswith("{")]


async def test_handlers_see_the_new_entity_state_folded_states_and_propagated_headers(
    node_factory: NodeFactory, logging_handler: Process
) -> None:
    node = node_factory(
        COS_WRITE_SIDE_PORT=str(logging_handler.ports["write_side"]),
        COS_WRITE_SIDE_PROPAGATED_HEADERS="x-trace,x-sig-bin",
    )
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("x-trace", "t-1"), ("x-sig-bin", b"\x0a\x0b"), ("x-ignored", "no"))
        await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="h-1", command=bank.open_account("H", 500)),
            metadata=metadata,
            timeout=10,
        )
        await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="h-1", command=bank.transfer_out(100, 5, "x")), timeout=10
        )
    seen = calls(logging_handler)
    assert [call["call"] for call in seen] == [
        "HandleCommand",
        "HandleEvent",
        "HandleCommand",
        "HandleEvent",
        "HandleEvent",
    ]
    open_command, open_event, transfer_command, withdrawn, fee = seen
    # a brand-new entity: packed Empty at revision 0 (§3.4); the event meta carries revision 1
    assert open_command["prior_type"] == "type.googleapis.com/google.protobuf.Empty"
    assert open_command["revision"] == 0 and open_event["revision"] == 1
    # propagated headers reach HandleCommand only (§3.3, decision D12)
    assert open_command["metadata"].get("x-trace") == "t-1"
    assert open_command["metadata"].get("x-sig-bin") == "0a0b"
    assert "x-ignored" not in open_command["metadata"]
    assert "x-trace" not in open_event["metadata"]
    # two events folded in order: consecutive revisions, the second sees the first one's state (D1)
    assert transfer_command["revision"] == 1
    assert withdrawn["revision"] == 2 and fee["revision"] == 3
    assert withdrawn["prior_type"] == fee["prior_type"] == "type.googleapis.com/bank.v1.BankAccount"
