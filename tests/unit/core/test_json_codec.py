"""The JSON rules of docs/contract.md §8.4, shared by the HTTP API and the HTTP write and read sides."""

from __future__ import annotations

import base64
import json
import re

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import StringValue
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.core.json_codec import (
    JsonShapeError,
    decode_any,
    encode_any,
    format_timestamp,
    message_from_json,
    message_to_json,
    parse_timestamp,
)
from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header, MetaData
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest, HandleReadSideResponse
from chiefofstate.gen.chief_of_state.v1.service_pb2 import ProcessCommandRequest, ProcessCommandResponse
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandResponse, HandleEventRequest


def packed(text: str) -> AnyProto:
    value = AnyProto()
    value.Pack(StringValue(value=text))
    return value


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (1738317600, 0, "2025-01-31T10:00:00Z"),
        (1738317600, 123_000_000, "2025-01-31T10:00:00.123Z"),
        (1738317600, 120_000_000, "2025-01-31T10:00:00.120Z"),
        (1738317600, 123_456_000, "2025-01-31T10:00:00.123456Z"),
        (1738317600, 1_000, "2025-01-31T10:00:00.000001Z"),
        (1738317600, 123_456_789, "2025-01-31T10:00:00.123456789Z"),
        (1738317600, 7, "2025-01-31T10:00:00.000000007Z"),
        (0, 0, "1970-01-01T00:00:00Z"),
        (-1, 500_000_000, "1969-12-31T23:59:59.500Z"),
        (-62135596800, 0, "0001-01-01T00:00:00Z"),
        (253402300799, 999_999_999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_timestamps_are_iso_instants_with_fraction_groups_of_three(
    seconds: int, nanos: int, expected: str
) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    assert format_timestamp(stamp) == expected
    assert parse_timestamp(expected) == stamp


@given(
    st.integers(min_value=-62135596800, max_value=253402300799),
    st.integers(min_value=0, max_value=999_999_999),
)
def test_every_valid_timestamp_survives_a_round_trip(seconds: int, nanos: int) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    assert parse_timestamp(format_timestamp(stamp)) == stamp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-31T12:00:00+02:00", Timestamp(seconds=1738317600)),
        ("2025-01-31T10:00:00.5Z", Timestamp(seconds=1738317600, nanos=500_000_000)),
        ("yesterday", Timestamp()),
        ("2025-13-45T10:00:00Z", Timestamp()),
        ("2025-01-31T10:00:00", Timestamp()),  # no zone: not an instant
        (12345, Timestamp()),
    ],
)
def test_timestamps_that_do_not_parse_become_the_zero_timestamp(text: object, expected: Timestamp) -> None:
    assert parse_timestamp(text) == expected


def test_an_any_is_the_base64_of_the_serialized_any_not_the_proto3_json_mapping() -> None:
    value = packed("hello")
    text = encode_any(value)
    assert base64.b64decode(text) == value.SerializeToString()
    assert decode_any(text, "command") == value
    assert decode_any(text.rstrip("="), "command") == value  # padding is optional, as in Java


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not base64!", "command is not valid base64"),
        ("aGVsbG8", "command is not a serialized google.protobuf.Any"),  # "hello"
        (base64.b64encode(b"\xff\xff\xff").decode(), "command is not a serialized google.protobuf.Any"),
        (42, "command must be a base64 string (got a number)"),
    ],
)
def test_bad_any_values_name_the_field(text: object, problem: str) -> None:
    with pytest.raises(JsonShapeError, match=re.escape(problem)):
        decode_any(text, "command")


def test_meta_fields_are_snake_case_and_defaults_are_left_out() -> None:
    meta = MetaData(
        entity_id="acc-1",
        revision_number=3,
        revision_date=Timestamp(seconds=1738317600, nanos=120_000_000),
        headers=[
            Header(key="x-user", string_value="ann"),
            Header(key="x-sig-bin", bytes_value=b"\x01\x02"),
            Header(key="x-empty", string_value=""),
            Header(key="x-none"),
        ],
    )
    meta.data["k"].CopyFrom(packed("v"))
    reply = ProcessCommandResponse(state=packed("s"), meta=meta)
    assert message_to_json(reply) == {
        "state": encode_any(packed("s")),
        "meta": {
            "entity_id": "acc-1",
            "revision_number": 3,
            "revision_date": "2025-01-31T10:00:00.120Z",
            "data": {"k": encode_any(packed("v"))},
            "headers": [
                {"key": "x-user", "string_value": "ann"},
                {"key": "x-sig-bin", "bytes_value": "AQI="},
                {"key": "x-empty", "string_value": ""},
                {"key": "x-none"},
            ],
        },
    }
    assert message_to_json(ProcessCommandResponse(state=AnyProto(), meta=MetaData())) == {"meta": {}}
    decoded = message_from_json(ProcessCommandResponse, json.loads(json.dumps(message_to_json(reply))))
    assert decoded == reply


def test_fields_named_always_are_written_even_when_default() -> None:
    request = HandleReadSideRequest(read_side_id="")
    assert message_to_json(request, always=("read_side_id",)) == {"read_side_id": ""}


def test_input_ignores_unknown_fields_and_nulls_and_reads_a_missing_bool_as_false() -> None:
    request = message_from_json(
        ProcessCommandRequest, {"entity_id": "a", "command": None, "surprise": [1, 2]}
    )
    assert request == ProcessCommandRequest(entity_id="a")
    assert message_from_json(HandleReadSideResponse, {}).successful is False
    assert message_from_json(HandleReadSideResponse, {"successful": True}).successful is True


def test_an_empty_command_string_is_an_empty_any() -> None:
    request = message_from_json(ProcessCommandRequest, {"command": ""})
    assert request.HasField("command") and request.command == AnyProto()


def test_events_must_be_an_array_of_base64_strings() -> None:
    events = [encode_any(packed("a")), encode_any(packed("b"))]
    response = message_from_json(HandleCommandResponse, {"events": events})
    assert list(response.events) == [packed("a"), packed("b")]
    with pytest.raises(JsonShapeError, match="events must be an array"):
        message_from_json(HandleCommandResponse, {"events": encode_any(packed("a"))})
    with pytest.raises(JsonShapeError, match=r"events\[1\] is not valid base64"):
        message_from_json(HandleCommandResponse, {"events": [events[0], "%%%"]})


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2], "the body must be a JSON object"),
        ("text", "the body must be a JSON object"),
        ({"event_meta": "x"}, "event_meta must be a JSON object"),
        ({"event_meta": {"revision_number": "3"}}, "event_meta.revision_number has the wrong type"),
        ({"event_meta": {"revision_number": -1}}, "event_meta.revision_number"),
        ({"event_meta": {"entity_id": 5}}, "event_meta.entity_id has the wrong type"),
        ({"event_meta": {"headers": [{"key": "k", "bytes_value": "%%"}]}}, "not valid base64"),
    ],
)
def test_wrong_shapes_are_refused_naming_the_field(data: object, problem: str) -> None:
    with pytest.raises(JsonShapeError, match=problem):
        message_from_json(HandleEventRequest, data)


def test_a_revision_date_that_does_not_parse_becomes_the_zero_timestamp() -> None:
    request = message_from_json(HandleEventRequest, {"event_meta": {"revision_date": "soon"}})
    assert request.event_meta.HasField("revision_date")
    assert request.event_meta.revision_date == Timestamp()
