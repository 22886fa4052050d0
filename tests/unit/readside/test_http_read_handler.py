"""The HTTP read-side protocol (docs/contract.md §5.3, §8.4): request shape and what counts as success."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.read_handler import DeliveryFailed, ReadSideCall
from chiefofstate.readside.http import HttpReadHandler
from tests.support.readside import packed


def wrapper() -> EventWrapper:
    return EventWrapper(
        event=packed("deposited"),
        resulting_state=packed("balance 5"),
        meta=MetaData(entity_id="é-1", revision_number=2, revision_date=Timestamp(seconds=1738317600)),
    )


def request() -> ReadSideCall:
    return ReadSideCall("é-1", wrapper().SerializeToString(), "balances")


def test_the_stored_event_wrapper_is_the_start_of_the_request() -> None:
    expected = HandleReadSideRequest(
        event=wrapper().event, state=wrapper().resulting_state, meta=wrapper().meta, read_side_id="balances"
    )
    assert request().encoded() == expected.SerializeToString()
    assert request().message() == expected
    fields = [(f.number, f.message_type) for f in EventWrapper.DESCRIPTOR.fields]
    assert fields == [(f.number, f.message_type) for f in HandleReadSideRequest.DESCRIPTOR.fields[:3]]


async def test_an_unreadable_row_is_a_failed_call() -> None:
    handler = handler_answering(200, b'{"successful": true}', [])
    with pytest.raises(DeliveryFailed, match="unreadable event row"):
        await handler.handle(ReadSideCall("e", b"\xff\xff\xff", "x"), 0, 1.0)
    await handler.close()


def handler_answering(status: int, body: bytes, seen: list[httpx.Request]) -> HttpReadHandler:
    def reply(incoming: httpx.Request) -> httpx.Response:
        seen.append(incoming)
        return httpx.Response(status, content=body)

    return HttpReadHandler(
        "read-handler", 8080, use_tls=False, max_connections=4, transport=httpx.MockTransport(reply)
    )


async def test_the_request_is_a_json_post_with_base64_anys_and_cos_headers() -> None:
    seen: list[httpx.Request] = []
    handler = handler_answering(200, b'{"successful": true}', seen)
    assert await handler.handle(request(), 7, 1.0) is True
    await handler.close()
    (sent,) = seen
    assert sent.method == "POST" and str(sent.url) == "http://read-handler:8080/v1/readside/handle"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-cos-entity-id"] == "?-1" and sent.headers["x-cos-event-tag"] == "7"
    body = json.loads(sent.content)
    assert AnyProto.FromString(base64.b64decode(body["event"])) == packed("deposited")
    assert AnyProto.FromString(base64.b64decode(body["state"])) == packed("balance 5")
    assert body["meta"] == {"entity_id": "é-1", "revision_number": 2, "revision_date": "2025-01-31T10:00:00Z"}
    assert body["read_side_id"] == "balances"


def test_read_side_id_is_present_even_when_empty() -> None:
    from chiefofstate.readside.http import request_body

    assert json.loads(request_body(HandleReadSideRequest())) == {"read_side_id": ""}


@pytest.mark.parametrize(
    ("body", "successful"),
    [
        (b'{"successful": true}', True),
        (b'{"successful": false}', False),
        (b"{}", False),  # a missing successful is false (§5.3)
        (b'{"successful": null}', False),
        (b'{"successful": "true"}', False),
    ],
)
async def test_only_a_200_with_successful_true_is_a_success(body: bytes, successful: bool) -> None:
    handler = handler_answering(200, body, [])
    assert await handler.handle(request(), 0, 1.0) is successful
    await handler.close()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b'{"successful": true}', "HTTP 500"),
        (404, b"not here", "HTTP 404: not here"),
        (200, b"<html>", "not JSON"),
        (200, b"[true]", "not an object"),
    ],
)
async def test_other_replies_are_failed_calls(status: int, body: bytes, message: str) -> None:
    handler = handler_answering(status, body, [])
    with pytest.raises(DeliveryFailed, match=message):
        await handler.handle(request(), 0, 1.0)
    await handler.close()


async def test_timeouts_and_refused_connections_are_failed_calls() -> None:
    def time_out(incoming: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=incoming)

    def refuse(incoming: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=incoming)

    for reply, message in ((time_out, "did not answer within 0.5s"), (refuse, "cannot reach")):
        handler = HttpReadHandler(
            "h", 1, use_tls=False, max_connections=1, transport=httpx.MockTransport(reply)
        )
        with pytest.raises(DeliveryFailed, match=message):
            await handler.handle(request(), 0, 0.5)
        await handler.close()
