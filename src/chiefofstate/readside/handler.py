"""The read-handler port: one call per event, to the application's read handler (SPEC.md §5.3)."""

from __future__ import annotations

from typing import Protocol

from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest

ENTITY_ID_HEADER = "x-cos-entity-id"
EVENT_TAG_HEADER = "x-cos-event-tag"


class DeliveryFailed(Exception):
    """The call did not return an answer: an error status, a timeout, a refused connection, a non-200
    HTTP status or a body that is not the expected JSON. Counts against the read-side breaker."""


class ReadHandler(Protocol):
    async def handle(
        self, request: HandleReadSideRequest, entity_id: str, shard: int, timeout_s: float
    ) -> bool:
        """The handler's `successful` (False also when it left the field out); raises DeliveryFailed."""
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
