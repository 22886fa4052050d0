"""The one place where failures become gRPC statuses (docs/contract.md §3.10)."""

from __future__ import annotations

import grpc
from grpc import aio

from chiefofstate.cluster.peers import ANSWERED_TRAILER, not_here_trailer
from chiefofstate.core.errors import CosError, ShardNotHere, status_message

STATUS_DETAILS_KEY = "grpc-status-details-bin"


async def abort_with(context: aio.ServicerContext[object, object], error: CosError) -> None:
    message = status_message(error)
    trailing: tuple[tuple[str, str | bytes], ...] = (
        ((STATUS_DETAILS_KEY, error.details), *ANSWERED_TRAILER) if error.details else ANSWERED_TRAILER
    )
    if isinstance(error, ShardNotHere):
        # Only a member's internal port answers this: the forwarding member re-routes on it.
        trailing = (*trailing, *not_here_trailer())
    await context.abort(grpc.StatusCode[error.code.name], message, trailing_metadata=trailing)
