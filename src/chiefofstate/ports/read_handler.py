"""The read-handler port: one call per event, to the application's read handler (docs/contract.md §5.3)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest

ENTITY_ID_HEADER = "x-cos-entity-id"
EVENT_TAG_HEADER = "x-cos-event-tag"


class DeliveryFailed(Exception):
    """The call did not return an answer: an error status, a timeout, a refused connection, a non-200
    HTTP status or a body that is not the expected JSON. Counts against the read-side breaker."""


# The request's first three fields are the stored EventWrapper's, with the same numbers and types
# (1 event, 2 resulting state as `state`, 3 meta), so the stored bytes followed by field 4 are exactly
# the serialized HandleReadSideRequest: no parsing and re-encoding per event (docs/contract.md §2.4, §2.6).
# tests/unit/readside/test_http_read_handler.py pins that correspondence.
@functools.lru_cache(maxsize=1024)
def _read_side_id_field(read_side_id: str) -> bytes:
    return HandleReadSideRequest(read_side_id=read_side_id).SerializeToString()


class ReadSideCall:
    """One event for one read side, as the read handler receives it."""

    __slots__ = ("_message", "_payload", "_read_side_id", "entity_id")

    def __init__(self, entity_id: str, event_wrapper: bytes, read_side_id: str) -> None:
        self.entity_id = entity_id
        self._payload = event_wrapper
        self._read_side_id = read_side_id
        self._message: HandleReadSideRequest | None = None

    def encoded(self) -> bytes:
        """The serialized HandleReadSideRequest, for gRPC."""
        return self._payload + _read_side_id_field(self._read_side_id)

    def message(self) -> HandleReadSideRequest:
        """The request as a message, for HTTP's JSON; raises DecodeError for an unreadable row."""
        if self._message is None:
            self._message = HandleReadSideRequest.FromString(self.encoded())
        return self._message


class ReadHandler(Protocol):
    async def handle(
        self, call: ReadSideCall, shard: int, timeout_s: float, trace_headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """The handler's `successful` (False also when it left the field out); raises DeliveryFailed.
        `trace_headers` carry the delivery span's context so the handler's spans join its trace."""
        ...

    async def close(self) -> None: ...


def header_value(text: str) -> str:
    """A metadata value that every transport accepts: upstream's Java client encodes headers as US-ASCII,
    which replaces each character it cannot encode (each UTF-16 unit) with '?'."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        character
        if character.isascii() and character.isprintable()
        else "??"
        if ord(character) > 0xFFFF
        else "?"
        for character in text
    )
