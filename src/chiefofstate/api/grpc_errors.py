"""The one place where failures become gRPC statuses (docs/contract.md §3.10)."""

from __future__ import annotations

import grpc
from grpc import aio

from chiefofstate.core.errors import CosError, status_message

STATUS_DETAILS_KEY = "grpc-status-details-bin"


async def abort_with(context: aio.ServicerContext[object, object], error: CosError) -> None:
    message = status_message(error)
    trailing = ((STATUS_DETAILS_KEY, error.details),) if error.details else ()
    await context.abort(grpc.StatusCode[error.code.name], message, trailing_metadata=trailing)
