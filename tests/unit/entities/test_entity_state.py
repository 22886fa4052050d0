"""The cached reply bytes are exactly what the reply message would serialize to."""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header, MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2 import GetStateResponse, ProcessCommandResponse


@given(
    type_url=st.text(max_size=80),
    # sizes on both sides of each varint length boundary (127/128 and 16,383/16,384 bytes)
    payload=st.one_of(st.binary(max_size=300), st.binary(min_size=16_300, max_size=16_500)),
    entity_id=st.text(max_size=40),
    revision=st.integers(min_value=0, max_value=2**32 - 1),
    header_count=st.integers(min_value=0, max_value=3),
)
def test_the_reply_equals_the_serialized_response(
    type_url: str, payload: bytes, entity_id: str, revision: int, header_count: int
) -> None:
    state = AnyProto(type_url=type_url, value=payload)
    meta = MetaData(
        entity_id=entity_id,
        revision_number=revision,
        revision_date=Timestamp(seconds=1_700_000_000, nanos=5),
        headers=[Header(key=f"h{n}", string_value="v") for n in range(header_count)],
    )
    cached = EntityState.of(state, meta)
    assert cached.reply == GetStateResponse(state=state, meta=meta).SerializeToString()
    assert cached.revision == revision
    decoded = ProcessCommandResponse.FromString(cached.reply)
    assert decoded.state == state
    assert decoded.meta == meta


def test_an_empty_state_is_still_present_in_the_reply() -> None:
    cached = EntityState.of(AnyProto(), MetaData())
    assert cached.decode().HasField("state")
    assert cached.decode().HasField("meta")
