"""The write-handler port: the two calls the node makes to the application's code (docs/contract.md §2.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)


class WriteHandler(Protocol):
    """Each call is bounded by `timeout_s` and raises a `CosError` on any failure:
    `HandlerFailed` carrying the handler's own status, `DeadlineExceeded`, `Unavailable`, `Internal`.
    `headers` are sent as request metadata (gRPC) or request headers (HTTP)."""

    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse: ...

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        """`headers` carry only trace context: propagated headers go to HandleCommand alone (D12)."""
        ...

    async def close(self) -> None: ...
