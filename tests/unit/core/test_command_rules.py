import unicodedata

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.core.command_rules import (
    ProtoValidation,
    candidate_events,
    initial_state,
    next_event_meta,
    resulting_state_or_fail,
    validate_entity_id,
)
from chiefofstate.core.errors import Code, Internal, InvalidArgument
from chiefofstate.gen.chief_of_state.plugins.persisted_headers.v1.headers_pb2 import Headers as LegacyHeaders
from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header, MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandResponse


def packed(message: StringValue | Int64Value) -> AnyProto:
    value = AnyProto()
    value.Pack(message)
    return value


def test_empty_entity_id_is_invalid_with_upstreams_message() -> None:
    with pytest.raises(InvalidArgument, match="^empty entity ID$") as caught:
        validate_entity_id("")
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_entity_ids_longer_than_the_journal_column_are_refused() -> None:
    validate_entity_id("x" * 255)
    with pytest.raises(InvalidArgument, match="256 characters"):
        validate_entity_id("x" * 256)


@pytest.mark.parametrize(
    "entity_id", ["a\x00b", "line\nbreak", "\r", "tab\there", "esc\x1b[0m", "del\x7f", "\x85"]
)
def test_entity_ids_with_control_characters_are_refused_naming_the_character(entity_id: str) -> None:
    with pytest.raises(InvalidArgument, match="control character U\\+00") as caught:
        validate_entity_id(entity_id)
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_an_unpaired_surrogate_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="U\\+D800"):
        validate_entity_id("x\ud800")


@given(st.text(min_size=1, max_size=300))
def test_an_id_is_valid_exactly_when_short_enough_and_free_of_control_characters(entity_id: str) -> None:
    expected_valid = len(entity_id) <= 255 and not any(
        unicodedata.category(character) in ("Cc", "Cs") for character in entity_id
    )
    try:
        validate_entity_id(entity_id)
    except InvalidArgument:
        assert not expected_valid
    else:
        assert expected_valid
        entity_id.encode("utf-8")  # every store can keep it


def test_new_entity_state_is_packed_empty_at_revision_zero() -> None:
    state = initial_state("acc-1")
    assert state.state.type_url == "type.googleapis.com/google.protobuf.Empty"
    assert state.state.value == b""
    assert state.meta == MetaData(entity_id="acc-1")


def test_events_win_over_the_deprecated_event_field() -> None:
    one, two, legacy = (
        packed(StringValue(value="1")),
        packed(StringValue(value="2")),
        packed(Int64Value(value=3)),
    )
    assert candidate_events(HandleCommandResponse(events=[one, two], event=legacy)) == [one, two]
    assert candidate_events(HandleCommandResponse(event=legacy)) == [legacy]
    assert candidate_events(HandleCommandResponse()) == []


def test_an_empty_any_among_events_is_the_handlers_mistake_and_names_its_position() -> None:
    real = packed(StringValue(value="x"))
    with pytest.raises(Internal, match="empty Any as event 2 of 3") as caught:
        candidate_events(HandleCommandResponse(events=[real, AnyProto(), real]))
    assert caught.value.code is Code.INTERNAL
    with pytest.raises(Internal, match="event 1 of 1"):
        candidate_events(HandleCommandResponse(events=[AnyProto()]))


def test_an_empty_deprecated_event_stays_a_no_op() -> None:
    assert candidate_events(HandleCommandResponse(event=AnyProto())) == []


def test_validation_allows_listed_names_and_rejects_others_with_the_full_type_url() -> None:
    rules = ProtoValidation(
        True, frozenset({"google.protobuf.StringValue"}), frozenset({"google.protobuf.Int64Value"})
    )
    rules.check_event(packed(StringValue()))
    rules.check_state(packed(Int64Value()))
    with pytest.raises(
        InvalidArgument, match="^invalid event: type.googleapis.com/google.protobuf.Int64Value$"
    ):
        rules.check_event(packed(Int64Value()))
    with pytest.raises(
        InvalidArgument, match="^invalid state: type.googleapis.com/google.protobuf.StringValue$"
    ):
        rules.check_state(packed(StringValue()))


def test_validation_with_an_empty_list_rejects_everything_and_off_allows_everything() -> None:
    with pytest.raises(InvalidArgument):
        ProtoValidation(True, frozenset(), frozenset()).check_event(packed(StringValue()))
    ProtoValidation(False).check_event(packed(StringValue()))


def test_next_meta_increments_revision_stamps_nanoseconds_and_keeps_data_empty() -> None:
    prior = MetaData(entity_id="e", revision_number=4, headers=[Header(key="old", string_value="x")])
    meta = next_event_meta(prior, 1_700_000_000_123_456_789, [Header(key="k", string_value="v")])
    assert meta.entity_id == "e" and meta.revision_number == 5
    assert meta.revision_date.seconds == 1_700_000_000 and meta.revision_date.nanos == 123_456_789
    assert list(meta.headers) == [Header(key="k", string_value="v")]
    assert len(meta.data) == 0


def test_a_missing_resulting_state_fails_with_upstreams_message() -> None:
    with pytest.raises(InvalidArgument, match="^event handler replied with empty state$"):
        resulting_state_or_fail(None)
    with pytest.raises(InvalidArgument):
        resulting_state_or_fail(AnyProto())


def test_legacy_headers_data_carries_the_persisted_headers_as_namely_releases_did() -> None:
    headers = [Header(key="x-user", string_value="ada"), Header(key="x-trace-bin", bytes_value=b"\x01\x02")]
    meta = next_event_meta(MetaData(entity_id="e"), 1, headers, legacy_headers_data=True)
    assert list(meta.data) == ["persisted_headers.v1"]
    packed = meta.data["persisted_headers.v1"]
    assert packed.type_url == "type.googleapis.com/chief_of_state.plugins.persisted_headers.v1.Headers"
    legacy = LegacyHeaders()
    assert packed.Unpack(legacy)
    assert [(h.key, h.WhichOneof("value")) for h in legacy.headers] == [
        ("x-user", "string_value"),
        ("x-trace-bin", "bytes_value"),
    ]
    assert legacy.headers[0].string_value == "ada" and legacy.headers[1].bytes_value == b"\x01\x02"
    assert list(meta.headers) == headers


def test_legacy_headers_data_is_present_even_without_persisted_headers() -> None:
    meta = next_event_meta(MetaData(entity_id="e"), 1, [], legacy_headers_data=True)
    legacy = LegacyHeaders()
    assert meta.data["persisted_headers.v1"].Unpack(legacy) and len(legacy.headers) == 0
