"""The JSON encoding of CoS messages shared by the HTTP API, HTTP write handlers and HTTP read sides.

docs/contract.md §8.4. Upstream does not use the proto3 JSON mapping: field names are the snake_case proto
names, every `google.protobuf.Any` is the base64 of the *serialized Any* (type URL and value
together, so no type registry is needed), timestamps are ISO-8601 UTC instants whose fraction has
3, 6 or 9 digits only when it is not zero, and fields holding their default value are left out.

One descriptor-driven encoder covers every message of the protocol, so the HTTP API, the HTTP
write side and the read sides cannot drift apart. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import unknown_fields
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

JsonObject = dict[str, Any]
M = TypeVar("M", bound=Message)
# Descriptors come from the upb or the pure-Python backend, whose stub types do not unify.
Field = Any

_ANY = AnyProto.DESCRIPTOR.full_name
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSTANT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d{1,9}))?(?P<zone>[Zz]|[+-]\d{2}:?\d{2})"
)
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


class JsonShapeError(ValueError):
    """The JSON does not have the shape of the expected message; the text names the field."""


# --- timestamps ---------------------------------------------------------------------------------


def format_timestamp(timestamp: Timestamp) -> str:
    """`2025-01-31T10:00:00Z`, `…:00.120Z`, `…:00.000123Z`, `…:00.000000007Z` (Java's Instant.toString)."""
    moment = _EPOCH + timedelta(seconds=timestamp.seconds)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    nanos = timestamp.nanos
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def parse_timestamp(text: object) -> Timestamp:
    """An ISO-8601 instant; anything that does not parse is the zero timestamp, as upstream reads it."""
    if not isinstance(text, str):
        return Timestamp()
    match = _INSTANT.fullmatch(text.strip())
    if match is None:
        return Timestamp()
    zone = match["zone"].upper()
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['time']}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return Timestamp()
    fraction = match["fraction"] or ""
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return Timestamp(seconds=seconds, nanos=nanos)


# --- Any as base64 ------------------------------------------------------------------------------


def encode_any(value: AnyProto) -> str:
    """Standard, padded base64 of the serialized Any."""
    return base64.b64encode(value.SerializeToString()).decode("ascii")


def decode_base64(text: object, what: str) -> bytes:
    """Standard alphabet; missing padding is tolerated as Java's decoder does."""
    if not isinstance(text, str):
        raise JsonShapeError(f"{what} must be a base64 string (got {_json_type(text)})")
    compact = text.strip()
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise JsonShapeError(f"{what} is not valid base64") from None


def decode_any(text: object, what: str) -> AnyProto:
    raw = decode_base64(text, what)
    try:
        value = AnyProto.FromString(raw)
    except DecodeError:
        raise JsonShapeError(f"{what} is not a serialized google.protobuf.Any") from None
    # Arbitrary bytes often parse as "some unknown fields"; a real Any has only its two fields.
    if len(unknown_fields.UnknownFieldSet(value)) > 0:
        raise JsonShapeError(f"{what} is not a serialized google.protobuf.Any")
    return value


def _is_empty_any(value: AnyProto) -> bool:
    return not value.type_url and not value.value


# --- messages to JSON ---------------------------------------------------------------------------


def message_to_json(message: Message, *, always: Iterable[str] = ()) -> JsonObject:
    """The §8.4 JSON object of `message`; fields named in `always` are written even when default."""
    keep = frozenset(always)
    out: JsonObject = {}
    field: Field
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            if len(value) > 0:
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {str(key): _value_to_json(value_field, value[key]) for key in value}
        elif _is_repeated(field):
            if len(value) > 0:
                out[field.name] = [_value_to_json(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                encoded = _value_to_json(field, value)
                if encoded is not None:
                    out[field.name] = encoded
        elif field.containing_oneof is not None:
            if message.HasField(field.name):
                out[field.name] = _value_to_json(field, value)
        elif field.name in keep or value != field.default_value:
            out[field.name] = _value_to_json(field, value)
    return out


def _value_to_json(field: Field, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == _ANY:
            return None if _is_empty_any(value) else encode_any(value)
        if name == _TIMESTAMP:
            return format_timestamp(value)
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


# --- JSON to messages ---------------------------------------------------------------------------


def message_from_json(message_class: type[M], data: object, *, path: str = "") -> M:
    """Build `message_class` from a §8.4 JSON object. Unknown fields and nulls are ignored; a
    value of the wrong type raises JsonShapeError naming the field."""
    message = message_class()
    _merge(message, data, path)
    return message


def _merge(message: Message, data: object, path: str) -> None:
    if not isinstance(data, Mapping):
        where = f"{path} " if path else "the body "
        raise JsonShapeError(f"{where}must be a JSON object (got {_json_type(data)})")
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        where = f"{path}.{key}" if path else key
        if _is_map(field):
            _merge_map(message, field, value, where)
        elif _is_repeated(field):
            if not isinstance(value, list):
                raise JsonShapeError(f"{where} must be an array (got {_json_type(value)})")
            target = getattr(message, field.name)
            for index, item in enumerate(value):
                _append(target, field, item, f"{where}[{index}]")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _merge_message_field(getattr(message, field.name), field, value, where)
            getattr(message, field.name).SetInParent()
        else:
            _set_scalar(message, field, value, where)


def _merge_map(message: Message, field: Field, value: object, where: str) -> None:
    if not isinstance(value, Mapping):
        raise JsonShapeError(f"{where} must be a JSON object (got {_json_type(value)})")
    target = getattr(message, field.name)
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if item is None:
            continue
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _merge_message_field(target[key], value_field, item, f"{where}.{key}")
        else:
            target[key] = _scalar(value_field, item, f"{where}.{key}")


def _append(target: Any, field: Field, item: object, where: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _merge_message_field(target.add(), field, item, where)
    else:
        target.append(_scalar(field, item, where))


def _merge_message_field(target: Message, field: Field, value: object, where: str) -> None:
    name = field.message_type.full_name
    if name == _ANY:
        target.CopyFrom(decode_any(value, where))
    elif name == _TIMESTAMP:
        target.CopyFrom(parse_timestamp(value))
    else:
        _merge(target, value, where)


def _set_scalar(message: Message, field: Field, value: object, where: str) -> None:
    try:
        setattr(message, field.name, _scalar(field, value, where))
    except (ValueError, TypeError) as error:  # e.g. a uint32 out of range
        raise JsonShapeError(f"{where}: {error}") from None


def _scalar(field: Field, value: object, where: str) -> Any:
    kind = field.type
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == FieldDescriptor.TYPE_BYTES:
        return decode_base64(value, where)
    if kind == FieldDescriptor.TYPE_STRING and isinstance(value, str):
        return value
    if kind == FieldDescriptor.TYPE_BOOL and isinstance(value, bool):
        return value
    if (kind in _INTEGER_TYPES or kind == FieldDescriptor.TYPE_ENUM) and number:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT) and number:
        return float(value)  # type: ignore[arg-type]
    raise JsonShapeError(f"{where} has the wrong type ({_json_type(value)})")


def _is_map(field: Field) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and _is_repeated(field)
    )


def _is_repeated(field: Field) -> bool:
    # `is_repeated` replaced `label` in recent protobuf releases; accept both.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == 3)  # LABEL_REPEATED


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case Mapping():
            return "an object"
    return type(value).__name__
