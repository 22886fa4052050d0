"""The HTTP API's answer body is byte for byte what the general §8.4 encoder and starlette's
JSONResponse make of the same reply, whatever the state and meta hold."""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from chiefofstate.api.http_json import state_reply_json
from chiefofstate.core.json_codec import message_to_json
from chiefofstate.gen.chief_of_state.v1 import common_pb2, service_pb2

_text = st.text(max_size=12)


@st.composite
def _replies(draw: st.DrawFn) -> service_pb2.GetStateResponse:
    reply = service_pb2.GetStateResponse()
    if draw(st.booleans()):
        reply.state.CopyFrom(AnyProto(type_url=draw(_text), value=draw(st.binary(max_size=20))))
    if draw(st.booleans()):
        meta = reply.meta
        meta.SetInParent()
        meta.entity_id = draw(_text)
        meta.revision_number = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            meta.revision_date.CopyFrom(
                Timestamp(seconds=draw(st.integers(0, 2**34)), nanos=draw(st.integers(0, 999_999_999)))
            )
        for key in draw(st.lists(_text, max_size=2)):
            meta.data[key].CopyFrom(AnyProto(type_url=draw(_text)))
        for key in draw(st.lists(_text, max_size=2)):
            if draw(st.booleans()):
                meta.headers.append(common_pb2.Header(key=key, string_value=draw(_text)))
            else:
                meta.headers.append(common_pb2.Header(key=key, bytes_value=draw(st.binary(max_size=8))))
    return reply


@given(_replies())
def test_the_answer_body_is_what_the_general_encoder_and_json_response_give(
    reply: service_pb2.GetStateResponse,
) -> None:
    sent = reply.SerializeToString()
    # encoded from the parsed bytes, as the node has them: a map's order is the parser's
    expected = JSONResponse(message_to_json(service_pb2.GetStateResponse.FromString(sent))).body
    assert state_reply_json(sent) == expected


def test_a_typical_state_is_written_with_its_meta() -> None:
    reply = service_pb2.GetStateResponse(
        state=AnyProto(type_url="type.googleapis.com/bank.Account", value=b"\x08\x01"),
        meta=common_pb2.MetaData(
            entity_id="acct-é", revision_number=2, revision_date=Timestamp(seconds=0, nanos=120_000_000)
        ),
    )
    assert (
        state_reply_json(reply.SerializeToString())
        == (
            '{"state":"CiB0eXBlLmdvb2dsZWFwaXMuY29tL2JhbmsuQWNjb3VudBICCAE=","meta":{"entity_id":"acct-é",'
            '"revision_number":2,"revision_date":"1970-01-01T00:00:00.120Z"}}'
        ).encode()
    )
