"""Events and states as a person reads them: `google.protobuf.Any` to the proto3 JSON form, and back
for a command typed on the command line (docs/cli.md, "JSON fields").

An Any whose type the descriptors do not know is never an error here: it is shown by its type URL and
its bytes in base64, so a listing still works without descriptors.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError

from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header, MetaData
from chiefofstate.inspect.descriptors import DescriptorsUnavailable, MessageTypes, UnknownType

TYPE_URL_PREFIX = "type.googleapis.com/"
JsonObject = dict[str, Any]


class CommandJsonError(ValueError):
    """A command's JSON does not fit its type; the text says which field."""


def type_name(type_url: str) -> str:
    """`type.googleapis.com/bank.v1.Deposit` → `bank.v1.Deposit` (any host part is dropped)."""
    return type_url.rsplit("/", 1)[-1]


def decode_any(value: AnyProto, types: MessageTypes) -> tuple[JsonObject | None, str | None]:
    """The message in `value` as proto3 JSON (its fields, without `@type`), or None with the reason it
    could not be decoded (unknown type, descriptors unreadable, bytes that do not parse)."""
    if not value.type_url:
        return None, "empty Any"
    try:
        message = types.message_class(type_name(value.type_url))()
        message.ParseFromString(value.value)
    except (UnknownType, DescriptorsUnavailable) as error:
        return None, str(error)
    except DecodeError:
        return None, f"the bytes are not a valid {type_name(value.type_url)}"
    try:
        decoded = json_format.MessageToDict(
            message, preserving_proto_field_name=False, descriptor_pool=types.pool
        )
    except (TypeError, KeyError, json_format.SerializeToJsonError) as error:  # an unknown Any inside
        return None, f"cannot render {type_name(value.type_url)} as JSON ({error})"
    return decoded, None


def any_view(value: AnyProto, types: MessageTypes) -> JsonObject:
    """`{"type": URL, "json": {...} | null, "base64": ... (only when undecoded), "undecoded_reason"}`."""
    decoded, reason = decode_any(value, types)
    view: JsonObject = {"type": value.type_url, "json": decoded}
    if decoded is None:
        view["base64"] = base64.b64encode(value.value).decode("ascii")
        view["undecoded_reason"] = reason
    return view


def encode_command(type_or_url: str, json_text: str, types: MessageTypes) -> AnyProto:
    """A command named by its message type (`bank.v1.Deposit`, or a full type URL) from its proto3 JSON
    form, packed as CoS expects it. Raises UnknownType, DescriptorsUnavailable or CommandJsonError."""
    name = type_name(type_or_url)
    message = types.message_class(name)()
    try:
        json_format.Parse(json_text or "{}", message, descriptor_pool=types.pool)
    except json_format.ParseError as error:
        raise CommandJsonError(f"{json_text!r} is not a {name} in proto3 JSON: {error}") from None
    packed = AnyProto()
    packed.Pack(message)
    return packed


def revision_date(meta: MetaData) -> str | None:
    if not meta.HasField("revision_date"):
        return None
    moment = meta.revision_date.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def header_view(header: Header) -> JsonObject:
    if header.WhichOneof("value") == "bytes_value":
        return {"key": header.key, "bytes_value": base64.b64encode(header.bytes_value).decode("ascii")}
    return {"key": header.key, "string_value": header.string_value}


def meta_view(meta: MetaData) -> JsonObject:
    return {
        "entity_id": meta.entity_id,
        "revision": meta.revision_number,
        "revision_date": revision_date(meta),
        "headers": [header_view(header) for header in meta.headers],
    }


def compact(value: JsonObject | None) -> str:
    """One line of JSON for a table cell."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
