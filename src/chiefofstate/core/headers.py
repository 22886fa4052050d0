"""Selecting request headers to propagate to the write handler or persist with events
(docs/contract.md §3.3)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar

from chiefofstate.core.errors import HeadersTooLarge
from chiefofstate.gen.chief_of_state.v1.common_pb2 import Header

HeaderValue = str | bytes
Metadata = Sequence[tuple[str, HeaderValue]]

# The metadata of the admin call being served, for the member that sends it on to another one (a
# read-side operation on a projection another member runs): its credentials must go along, and the
# operations between the rpc and the peer call have no other reason to carry request headers.
admin_caller: ContextVar[Metadata] = ContextVar("admin_caller", default=())

# What one command may carry on in propagated and persisted headers, keys and values together. A write
# handler's gRPC server refuses metadata over 8 KiB by default (as RESOURCE_EXHAUSTED, which would
# read as "the node is overloaded"), and persisted headers are copied into every event's meta.
MAX_CARRIED_HEADER_BYTES = 8192
MAX_CARRIED_HEADER_VALUES = 64


def parse_header_list(csv: str) -> tuple[str, ...]:
    """Comma-separated names: trimmed, empties dropped, duplicates removed (first wins)."""
    seen: dict[str, None] = {}
    for part in csv.split(","):
        name = part.strip()
        if name and name.lower() not in {key.lower() for key in seen}:
            seen[name] = None
    return tuple(seen)


def select_headers(allowed: Sequence[str], metadata: Metadata) -> list[tuple[str, HeaderValue]]:
    """Every value of every allowed key, in list order then arrival order; key spelled as listed."""
    selected: list[tuple[str, HeaderValue]] = []
    for name in allowed:
        wanted = name.lower()
        selected.extend((name, value) for key, value in metadata if key.lower() == wanted)
    return selected


def to_persisted_headers(selected: Iterable[tuple[str, HeaderValue]]) -> list[Header]:
    """`-bin` keys become bytes values, all others string values."""
    headers: list[Header] = []
    for key, value in selected:
        if key.lower().endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            headers.append(Header(key=key, bytes_value=raw))
        else:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            headers.append(Header(key=key, string_value=text))
    return headers


def to_outgoing_metadata(selected: Iterable[tuple[str, HeaderValue]]) -> tuple[tuple[str, HeaderValue], ...]:
    """gRPC metadata for HandleCommand: `-bin` keys carry bytes, the rest ASCII strings."""
    outgoing: list[tuple[str, HeaderValue]] = []
    for key, value in selected:
        lowered = key.lower()
        if lowered.endswith("-bin"):
            outgoing.append((lowered, value if isinstance(value, bytes) else value.encode()))
        else:
            outgoing.append((lowered, value.decode("latin-1") if isinstance(value, bytes) else value))
    return tuple(outgoing)


def check_carried_headers(selected: Sequence[tuple[str, HeaderValue]]) -> None:
    """Refuses headers too large to propagate or persist: the caller's mistake (HTTP 431)."""
    if len(selected) > MAX_CARRIED_HEADER_VALUES:
        raise HeadersTooLarge(
            f"the request carries {len(selected)} values of propagated or persisted headers; at most "
            f"{MAX_CARRIED_HEADER_VALUES} are allowed"
        )
    size = 0
    for key, value in selected:
        size += len(key) + (len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "replace")))
    if size > MAX_CARRIED_HEADER_BYTES:
        names = ", ".join(sorted({key for key, _ in selected}))
        raise HeadersTooLarge(
            f"the propagated and persisted headers ({names}) total {size} bytes; at most "
            f"{MAX_CARRIED_HEADER_BYTES} are allowed"
        )
