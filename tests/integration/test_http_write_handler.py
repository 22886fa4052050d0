"""What only an HTTP write handler can do wrong: error statuses, bodies that are not JSON
(docs/contract.md §9).

Hangs, unreachable handlers and the breaker are covered for both protocols in test_handler_faults.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from chiefofstate_examples.bank import client as bank
from chiefofstate_examples.bank.http_write_handler import (
    EVENT_FAILURE_AMOUNT,
    MALFORMED_JSON_AMOUNT,
    SERVICE_UNAVAILABLE_AMOUNT,
)
from grpc import aio

from chiefofstate.cli.processes import Process, start_bank_write_handler
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("write_protocol", ["http"], indirect=True),
    pytest.mark.parametrize("store_env", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def faulty_http_handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    handler = start_bank_write_handler(
        tmp_path_factory.mktemp("faulty-http"), extra_env={"BANK_HANDLER_FAULTS": "1"}, protocol="http"
    )
    yield handler
    handler.stop()


@pytest.fixture
async def cos(
    node_factory: NodeFactory, faulty_http_handler: Process
) -> AsyncIterator[ChiefOfStateServiceStub]:
    node = node_factory(COS_WRITE_SIDE_PORT=str(faulty_http_handler.ports["http"]))
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        yield ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


async def refusal(cos: ChiefOfStateServiceStub, entity: str, amount: int) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=entity, command=bank.deposit(amount)), timeout=10
        )
    return caught.value


async def revision(cos: ChiefOfStateServiceStub, entity: str) -> int:
    reply = await cos.GetState(pb.GetStateRequest(entity_id=entity), timeout=10)
    return int(reply.meta.revision_number)


async def test_a_refusal_becomes_internal_with_the_status_and_the_body_in_the_message(
    cos: ChiefOfStateServiceStub,
) -> None:
    await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="r-1", command=bank.open_account("R", 10)), timeout=10
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="r-1", command=bank.withdraw(500)), timeout=10
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    # the body goes on with the rich details (base64), cut where the node stops quoting
    assert (error.details() or "").startswith(
        "HTTP command handler request failed with status 412 Precondition Failed: "
        '{"error":"insufficient funds: balance 10, requested 500","code":"FAILED_PRECONDITION","details":["'
    )
    assert await revision(cos, "r-1") == 1


async def test_a_5xx_reply_quotes_only_the_first_200_characters_of_its_body(
    cos: ChiefOfStateServiceStub,
) -> None:
    await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="r-2", command=bank.open_account("R", 10)), timeout=10
    )
    error = await refusal(cos, "r-2", SERVICE_UNAVAILABLE_AMOUNT)
    assert error.code() == grpc.StatusCode.INTERNAL
    prefix = "HTTP command handler request failed with status 503 Service Unavailable: "
    details = error.details() or ""
    assert details.startswith(prefix + "test hook: the bank is closed for maintenance.")
    assert len(details) == len(prefix) + 200
    assert await revision(cos, "r-2") == 1


async def test_a_failing_event_handler_names_the_event_path(cos: ChiefOfStateServiceStub) -> None:
    await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="r-3", command=bank.open_account("R", 10)), timeout=10
    )
    error = await refusal(cos, "r-3", EVENT_FAILURE_AMOUNT)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == (
        "HTTP event handler request failed with status 500 Internal Server Error: "
        '{"error":"test hook: the event handler failed","code":"INTERNAL"}'
    )
    assert await revision(cos, "r-3") == 1


async def test_a_reply_that_is_not_json_fails_the_command_and_writes_nothing(
    cos: ChiefOfStateServiceStub,
) -> None:
    await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="r-4", command=bank.open_account("R", 10)), timeout=10
    )
    error = await refusal(cos, "r-4", MALFORMED_JSON_AMOUNT)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert (error.details() or "").startswith("HTTP command handler replied with malformed JSON")
    assert await revision(cos, "r-4") == 1
    # the handler and the node are fine afterwards
    reply = await cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="r-4", command=bank.deposit(1)), timeout=10
    )
    assert reply.meta.revision_number == 2
