"""The headers of the handler call being answered, for methods that need the caller's headers.

The node forwards the headers listed in COS_WRITE_SIDE_PROPAGATED_HEADERS with each HandleCommand, as
gRPC metadata or HTTP headers. Inside a command method, `call_headers()` returns them (with whatever
else the transport carried, such as `user-agent`): lower-case names; values of `-bin` headers are bytes.
Outside a handler call it is empty. A context variable rather than a method parameter: it follows the
call through sync and async methods and whatever they call, and costs nothing to methods that ignore it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType

HeaderValue = str | bytes

_EMPTY: Mapping[str, HeaderValue] = MappingProxyType({})
_current: ContextVar[Mapping[str, HeaderValue]] = ContextVar("chiefofstate_sdk_call_headers", default=_EMPTY)


def call_headers() -> Mapping[str, HeaderValue]:
    """The headers of the call being handled (empty outside one)."""
    return _current.get()


def enter(pairs: Iterable[tuple[str, HeaderValue]]) -> Token[Mapping[str, HeaderValue]]:
    """Make `pairs` the current call's headers (the first value of a repeated name wins)."""
    headers: dict[str, HeaderValue] = {}
    for key, value in pairs:
        headers.setdefault(key.lower(), value)
    return _current.set(MappingProxyType(headers))


def leave(token: Token[Mapping[str, HeaderValue]]) -> None:
    _current.reset(token)


def from_http(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, HeaderValue]]:
    """HTTP headers as the node sends them: `-bin` values are base64 of the bytes."""
    decoded: list[tuple[str, HeaderValue]] = []
    for key, value in pairs:
        name = key.lower()
        if name.endswith("-bin"):
            try:
                decoded.append((name, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)))
            except (binascii.Error, ValueError):
                decoded.append((name, value))  # not base64 after all: passed on as sent
        else:
            decoded.append((name, value))
    return decoded
