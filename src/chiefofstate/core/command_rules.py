"""How a write handler's answers become events, metas and states (docs/contract.md §3.4–3.9, decision D1)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp

from chiefofstate.core.errors import Internal, InvalidArgument
from chiefofstate.gen.chief_of_state.plugins.persisted_headers.v1.headers_pb2 import Headers as LegacyHeaders
from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header, MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandResponse

MAX_ENTITY_ID_LENGTH = 255  # event_journal.persistence_id is VARCHAR(255) (decision D9)
EMPTY_STATE_TYPE_URL = "type.googleapis.com/google.protobuf.Empty"


# Control characters (Unicode category Cc) and unpaired surrogates. PostgreSQL text cannot hold NUL, a
# surrogate has no UTF-8 encoding, and a line break or escape in an id breaks log lines and HTTP paths:
# such an id could be stored by one store and not by another, so every store refuses it
# (docs/contract.md §3.1).
_FORBIDDEN_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_entity_id(entity_id: str) -> None:
    """Refuses, before anything runs, an id that some store could not keep exactly as given."""
    if not entity_id:
        raise InvalidArgument("empty entity ID")
    if len(entity_id) > MAX_ENTITY_ID_LENGTH:
        raise InvalidArgument(
            f"entity ID is {len(entity_id)} characters long; at most {MAX_ENTITY_ID_LENGTH} are allowed"
        )
    forbidden = _FORBIDDEN_IN_ID.search(entity_id)
    if forbidden is not None:
        raise InvalidArgument(
            f"entity ID contains the control character U+{ord(forbidden.group()):04X} at position "
            f"{forbidden.start()}; control characters and unpaired surrogates are not allowed"
        )


def initial_state(entity_id: str) -> StateWrapper:
    """A brand-new entity: packed Empty and revision 0, exactly as write handlers expect (§3.4)."""
    empty = AnyProto()
    empty.Pack(Empty())
    return StateWrapper(state=empty, meta=MetaData(entity_id=entity_id))


def _is_empty_any(value: AnyProto) -> bool:
    return not value.type_url and not value.value


def candidate_events(response: HandleCommandResponse) -> list[AnyProto]:
    """`events` wins over the deprecated `event`; [] means no-op (§3.6). An empty Any in `events` is the
    handler's mistake (it would be persisted as nothing), refused rather than silently dropped; an empty
    deprecated `event` stays a no-op, as upstream handlers use it."""
    if len(response.events) > 0:
        events = list(response.events)
        for position, event in enumerate(events, start=1):
            if _is_empty_any(event):
                raise Internal(
                    f"the write handler returned an empty Any as event {position} of {len(events)} "
                    "(no type URL, no bytes); return no events for a command that changes nothing"
                )
        return events
    if response.HasField("event") and not _is_empty_any(response.event):
        return [response.event]
    return []


def message_name(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class ProtoValidation:
    """Allow-lists of fully-qualified message names (§3.12); `enabled=False` allows everything."""

    enabled: bool = False
    event_names: frozenset[str] = frozenset()
    state_names: frozenset[str] = frozenset()

    def check_event(self, event: AnyProto) -> None:
        if self.enabled and message_name(event.type_url) not in self.event_names:
            raise InvalidArgument(f"invalid event: {event.type_url}")

    def check_state(self, state: AnyProto) -> None:
        if self.enabled and message_name(state.type_url) not in self.state_names:
            raise InvalidArgument(f"invalid state: {state.type_url}")


def next_event_meta(
    prior: MetaData, now_ns: int, headers: Sequence[Header], *, legacy_headers_data: bool = False
) -> MetaData:
    """The meta of the event that follows `prior`: next revision, stamped now, empty data (D12) — unless
    `legacy_headers_data` asks for the persisted headers in `data` as well, the way Namely-era releases
    put them there for their clients (docs/contract.md §2.8)."""
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    meta = MetaData(
        entity_id=prior.entity_id,
        revision_number=prior.revision_number + 1,
        revision_date=Timestamp(seconds=seconds, nanos=nanos),
        headers=headers,
    )
    if legacy_headers_data:
        meta.data[LEGACY_HEADERS_KEY].Pack(legacy_persisted_headers(headers))
    return meta


# The key of MetaData.data under which Namely-era releases returned the persisted headers.
LEGACY_HEADERS_KEY = "persisted_headers.v1"


def legacy_persisted_headers(headers: Sequence[Header]) -> LegacyHeaders:
    """Persisted headers in the Namely-era plugin message (present even when there are none, as there)."""
    legacy = LegacyHeaders()
    for header in headers:
        if header.WhichOneof("value") == "bytes_value":
            legacy.headers.add(key=header.key, bytes_value=header.bytes_value)
        else:
            legacy.headers.add(key=header.key, string_value=header.string_value)
    return legacy


def resulting_state_or_fail(resulting_state: AnyProto | None) -> AnyProto:
    if resulting_state is None or _is_empty_any(resulting_state):
        raise InvalidArgument("event handler replied with empty state")
    return resulting_state
